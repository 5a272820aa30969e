"""Datasets: import once into a cached array, then sample episodes from it.

Kinds: `omniglot` (official layout, zips or sprite form), `miniimagenet` (images
with the Ravi & Larochelle split CSVs, class-folder trees, learn2learn pickles,
npz), `folder` (a user's tree of class folders), `embeddings` (LEO's precomputed
`{train,val,test}_embeddings.pkl`, float features) and `sinusoid` (generated).
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import FewshotError
from . import embeddings, folder, miniimagenet, omniglot
from .episodes import EpisodeSampler, Prefetcher, Task
from .images import fingerprint, home, is_prepared, read_dataset, read_features
from .sinusoid import SinusoidSampler

GENERATED = {"sinusoid"}
CACHE_VERSION = 2  # part of every cache key: raise it when an importer's output changes
# kind -> (import a raw copy into a prepared folder, class splits)
IMPORTERS = {"omniglot": omniglot.import_omniglot, "folder": folder.import_folder,
             "miniimagenet": miniimagenet.import_miniimagenet, "embeddings": embeddings.import_embeddings}
SPLITTERS = {"omniglot": omniglot.splits, "folder": folder.splits, "miniimagenet": miniimagenet.splits,
             "embeddings": embeddings.splits}
FEATURES = {"embeddings"}  # kinds stored as float features: their "size" is the feature dimension


def array_size(config):
    """The size a prepared array is stored at: the image side, or the feature dimension."""
    return config["embedding_dim"] if config["dataset"] in FEATURES else config["image_size"]


def resolve(config, progress=True):
    """The prepared folder for `config["data"]`: a prepared folder, a raw copy (imported
    into a cache under FEWSHOT_HOME on first use), or a name under FEWSHOT_HOME."""
    spec, kind, size = config["data"], config["dataset"], array_size(config)
    if spec is None:
        raise FewshotError("no data given: pass --data DIR (e.g. ../shared/data/omniglot-28) "
                           "or prepare a copy with `fewshot data omniglot --from PATH`")
    path = Path(spec).expanduser()
    if not path.exists():
        named = home() / str(spec)
        if not is_prepared(named):
            raise FewshotError(f"data {spec!r} is neither a folder nor a dataset prepared under {home()}; "
                               f"check the path, or prepare it with `fewshot data {kind} --from PATH`")
        path = named
    if kind == "embeddings":  # LEO's layout: <data_path>/<dataset_name>/<embedding_crop>/
        path = embeddings.locate(path, config["embedding_crop"], config["embedding_dataset"])
    if is_prepared(path, size):
        return path
    if is_prepared(path):  # prepared at another size: decode again from the recorded source
        meta = read_dataset(path, None).meta
        source = Path(meta.get("source") or "")
        if not meta.get("source") or not source.exists():
            raise FewshotError(f"{path} is prepared at sizes {meta.get('sizes')}, not {size}, and its source "
                               f"{source} is gone; import it again with --size {size}")
        if meta.get("fingerprint") and meta["fingerprint"] != fingerprint(source, meta.get("csv_dir")):
            raise FewshotError(f"{path} is prepared at sizes {meta.get('sizes')}, not {size}, and its source "
                               f"{source} has changed since; prepare size {size} under another name "
                               f"(`fewshot data {meta.get('dataset')} --from {source} --name NEW --size {size}`)")
        _import(meta["dataset"], source, path, size, meta, progress)
        return path
    return _cache(kind, path, size, progress)


def _cache(kind, path, size, progress):
    """The cache of raw copy `path` at `size`, keyed on its place, its content (the names,
    sizes and modification times of its files) and the preparation settings: a changed
    copy or another size never meets a stale array."""
    place = hashlib.sha1(os.fsencode(str(path.resolve()))).hexdigest()[:12]
    content = hashlib.sha1(f"{kind} {size} {CACHE_VERSION} {fingerprint(path)}".encode()).hexdigest()[:12]
    cache = home() / "cache" / f"{kind}-{place}-{content}"
    if not is_prepared(cache, size):
        _import(kind, path, cache, size, {}, progress)
    return cache


# the import options a prepared dataset records, so that it can be decoded again at another size
REIMPORT_OPTIONS = {"folder": ("ratios", "seed", "channels"), "miniimagenet": ("csv_dir", "allow_partial")}


def _import(kind, source, target, size, meta, progress):
    options = {k: meta[k] for k in REIMPORT_OPTIONS.get(kind, ()) if k in meta}
    if "ratios" in options:
        options["ratios"] = tuple(options["ratios"])
    IMPORTERS[kind](source, target, size=size, progress=progress, **options)


def load(config, progress=True):
    """(dataset, {split: class refs}) for a config; (None, None) for generated tasks."""
    if config["dataset"] in GENERATED:
        return None, None
    if config["dataset"] not in IMPORTERS:
        known = ", ".join([*IMPORTERS, *GENERATED])
        raise FewshotError(f"unknown dataset {config['dataset']!r}; choose one of {known}")
    reader = read_features if config["dataset"] in FEATURES else read_dataset
    dataset = reader(resolve(config, progress), array_size(config))
    if dataset.images.nbytes < (1 << 30):  # small sets live in memory; large ones stay memory-mapped
        dataset.images = np.ascontiguousarray(dataset.images)
    return dataset, SPLITTERS[dataset.meta["dataset"]](dataset, config["split"])


def sampler(config, dataset, refs, split, seed, query=None, dtype=torch.float32, ways=None):
    query = config["query"] if query is None else query
    ways = config["ways"] if ways is None else ways
    if config["dataset"] in GENERATED:
        return SinusoidSampler(config["shots"], query, seed + {"train": 0, "val": 1, "test": 2}[split], dtype)
    if not refs[split]:
        raise FewshotError(f"the {split} split of {dataset.root} has no classes; give that split classes "
                           f"(a {split}/ folder, or --split ratios that leave it some)")
    return EpisodeSampler(dataset.images, refs[split], ways, config["shots"], query, seed,
                          split=split, preprocessing=preprocessing(dataset, config), dtype=dtype)


def preprocessing(dataset, config):
    """How stored pixels become the model's input (also saved with checkpoints, for predict):
    channels, Omniglot's inversion, and the meta-train split's per-channel mean and std."""
    if dataset is None:
        return None
    meta = dataset.meta
    normalize = meta.get("mean") is not None and len(meta["mean"]) == config["channels"]
    return {"invert": bool(meta.get("invert", False)), "size": config["image_size"],
            "channels": config["channels"], "mean": meta["mean"] if normalize else None,
            "std": meta["std"] if normalize else None}


__all__ = ["EpisodeSampler", "Prefetcher", "SinusoidSampler", "Task", "load", "preprocessing", "resolve",
           "sampler"]
