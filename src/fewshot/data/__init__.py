"""Datasets: import once into a cached array, then sample episodes from it.

A config's `dataset` names a kind registered in `DATASETS` (kinds.py), one module
each: `omniglot` (official layout, zips or sprite form), `miniimagenet` (images with
the Ravi & Larochelle split CSVs, class-folder trees, learn2learn pickles, npz),
`folder` (a user's tree of class folders), `embeddings` (LEO's precomputed
`{train,val,test}_embeddings.pkl`, float features) and `sinusoid` (generated).
This module turns a config into its prepared dataset, class splits and task
samplers, whatever the kind.

torch is imported only when a sampler is built: preparing data stays cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import Config
from ..errors import FewshotError
from .images import ImageClass, ImageDataset, fingerprint, home, is_prepared, read_dataset, read_features
from .kinds import DATASETS, SPLITS, DatasetKind

if TYPE_CHECKING:
    import torch

    from .episodes import EpisodeSampler
    from .sinusoid import SinusoidSampler

CACHE_VERSION = 2  # part of every cache key: raise it when an importer's output changes


def kind(name: str) -> DatasetKind:
    """The dataset kind `name` (a FewshotError naming the known kinds if there is none)."""
    return DATASETS.get(name)


def array_size(config: Config) -> int:
    """The size a prepared array is stored at: the image side, or the feature dimension."""
    return config.embedding_dim if kind(config.dataset).features else config.image_size


def resolve(config: Config, progress: bool = True) -> Path:
    """The prepared folder for `config.data`: a prepared folder, a raw copy (imported
    into a cache under FEWSHOT_HOME on first use), or a name under FEWSHOT_HOME."""
    spec, wanted, size = config.data, kind(config.dataset), array_size(config)
    if spec is None:
        raise FewshotError("no data given: pass --data DIR (e.g. ../shared/data/omniglot-28) "
                           "or prepare a copy with `fewshot data omniglot --from PATH`")
    path = Path(spec).expanduser()
    if not path.exists():
        named = home() / str(spec)
        # a folder of embedding files (`fewshot embed --out`) is named as it is, not prepared
        if not is_prepared(named) and not (wanted.features and named.is_dir()):
            make = (f"make the embedding files there with `fewshot embed PRESET --data IMAGES --out {named}` (for a "
                    f"shipped LEO model: `fewshot embed --from-model MODEL --out {named}`)" if wanted.features else
                    f"prepare it with `fewshot data {wanted.name} --from PATH`")
            raise FewshotError(f"data {spec!r} is neither a folder nor a dataset prepared under {home()}; "
                               f"check the path, or {make}")
        path = named
    path = wanted.locate(path, config)
    if is_prepared(path):
        prepared = kind(read_dataset(path, None).meta.get("dataset"))
        if prepared.features != wanted.features:  # never decode images as features, or the reverse
            holds, reads = ("image features", "images") if prepared.features else ("images", "image features")
            fix = (f"make features from it with `fewshot embed PRESET --data {spec} --out DIR` and train on DIR"
                   if wanted.features else "give a dataset of images")
            raise FewshotError(f"{path} holds {holds} ({prepared.name}), but this preset (dataset: "
                               f"{config.dataset}) reads {reads}; {fix}")
    if is_prepared(path, size):
        return path
    if is_prepared(path):  # prepared at another size: decode its recorded source again, into a cache
        meta = read_dataset(path, None).meta
        source = Path(meta.get("source") or "")
        if not meta.get("source") or not source.exists():
            raise FewshotError(f"{path} is prepared at sizes {meta.get('sizes')}, not {size}, and its source "
                               f"{source} is gone; import it again with --size {size}")
        if meta.get("fingerprint") and meta["fingerprint"] != fingerprint(source, meta.get("csv_dir")):
            raise FewshotError(f"{path} is prepared at sizes {meta.get('sizes')}, not {size}, and its source "
                               f"{source} has changed since; prepare size {size} under another name "
                               f"(`fewshot data {meta.get('dataset')} --from {source} --name NEW --size {size}`)")
        # nothing but `fewshot data` writes into a prepared dataset: the other size is a cache of its source
        return _cache(kind(meta["dataset"]), source, size, progress, meta)
    return _cache(wanted, path, size, progress)


def _cache(dataset_kind, path, size, progress, meta=None):
    """The cache of raw copy `path` at `size`, keyed on its place, its content (the names,
    sizes and modification times of its files) and the preparation settings (`meta`: a
    prepared folder's, whose options it is decoded with): a changed copy or another size
    never meets a stale array."""
    options = dataset_kind.import_options(meta) if meta else {}
    place = hashlib.sha1(os.fsencode(str(path.resolve()))).hexdigest()[:12]
    settings = f"{dataset_kind.name} {size} {CACHE_VERSION} {fingerprint(path, options.get('csv_dir'))}"
    if options:
        settings += " " + json.dumps(options, sort_keys=True, default=str)
    content = hashlib.sha1(settings.encode()).hexdigest()[:12]
    cache = home() / "cache" / f"{dataset_kind.name}-{place}-{content}"
    if not is_prepared(cache, size):
        _import(dataset_kind, path, cache, size, meta or {}, progress)
    return cache


def _import(dataset_kind, source, target, size, meta, progress):
    """Decode `source` into `target` at `size`, with the options `meta` (a prepared
    folder's) records, so that another size holds the same classes in the same splits."""
    options = dataset_kind.import_options(meta) if meta else {}
    dataset_kind.prepare(source, target, size=size, progress=progress, **options)


def load(config: Config, progress: bool = True) -> tuple[ImageDataset | None, dict[str, list[ImageClass]] | None]:
    """(dataset, {split: [ImageClass]}) for a config; (None, None) for generated tasks."""
    wanted = kind(config.dataset)
    if wanted.generated:
        return None, None
    reader = read_features if wanted.features else read_dataset
    dataset = reader(resolve(config, progress), array_size(config))
    if dataset.images.nbytes < (1 << 30):  # small sets live in memory; large ones stay memory-mapped
        dataset.images = np.ascontiguousarray(dataset.images)
    return dataset, kind(dataset.meta["dataset"]).splits(dataset, config.split)


def sampler(config: Config, dataset: ImageDataset | None, refs: dict[str, list[ImageClass]] | None, split: str,
            seed: int, query: int | None = None, dtype: torch.dtype | None = None,
            ways: int | None = None) -> EpisodeSampler | SinusoidSampler:
    """The task sampler of `split`. `ways` and `query` default to the meta-training
    settings; evaluation passes its own (eval_ways, eval_query). Tasks that do not fit
    the split are refused with one line naming every setting to change and the values
    that fit; the meta-train sampler (built with the config's own ways and query, as the
    trainer does) also checks the validation and test tasks the run will be evaluated
    on, so that one hint is enough."""
    training = split == "train" and ways is None and query is None
    query = config.query if query is None else query
    ways = config.ways if ways is None else ways
    dataset_kind = kind(config.dataset)
    if dataset_kind.generated:
        return dataset_kind.sampler(config, split, seed, query, dtype)
    for needed in [split] + (["val"] if training else []):  # training validates on val
        if not refs[needed]:
            raise FewshotError(f"the {needed} split of {dataset.root} has no classes; give that split classes "
                               f"(a {needed}/ folder, or --ratios that leave it some)")
    if training:
        checks = [("train", "ways", ways, "query", query)]
        ways_key, query_key = _eval_key(config, "ways"), _eval_key(config, "query")
        checks += [(s, ways_key, getattr(config, ways_key), query_key, getattr(config, query_key))
                   for s in ("val", "test") if refs[s]]
    else:
        checks = [(split, _key(config, "ways", ways), ways, _key(config, "query", query), query)]
    check_tasks_fit(refs, config.shots, checks, training)
    import torch

    from .episodes import EpisodeSampler
    stored = kind(dataset.meta["dataset"])  # the kind that split the classes says how its tasks are drawn
    rule = stored.episodes(config, split)
    alphabets = [stored.alphabet(c) for c in refs[split]] if rule.within_alphabet else None
    return EpisodeSampler(dataset.images, refs[split], ways, config.shots, query, seed, split=split,
                          preprocessing=preprocessing(dataset, config), dtype=torch.float32 if dtype is None else dtype,
                          alphabets=alphabets, same_drawers=rule.same_drawers, alone=rule.alone,
                          distort=rule.distort and training)


def _eval_key(config, name):
    """The key that sets `name` ("ways" or "query") at evaluation: eval_<name> when set."""
    return f"eval_{name}" if getattr(config, f"eval_{name}") is not None else name


def _key(config, name, value):
    """The key an evaluation sampler's `name` value came from: eval_<name> when set to it."""
    setting = getattr(config, f"eval_{name}")
    return f"eval_{name}" if setting is not None and value == setting else name


def check_tasks_fit(refs: dict[str, list[ImageClass]], shots: int, checks: list[tuple], training: bool = True) -> None:
    """Refuse tasks that do not fit their splits, in one line that names each problem and
    one fix for all of them: every setting that blocks (`--set KEY=N`) with the largest
    value that fits every split it applies to, or, where no setting can help (a split of
    one class, a class of one image), what to add to the data. `checks`: (split, ways key,
    ways, query key, query) per split. `training`: the fix is a `fewshot train` setting;
    otherwise the run's settings are fixed, and the fix says so."""
    too_few_classes, too_few_images, data_fixes = {}, {}, []  # problems, grouped so that each is said once
    limits = {}  # key -> the largest value that fits every split the key applies to

    def limit(key, value):
        limits[key] = min(limits.get(key, value), value)

    for split, ways_key, ways, _, _ in checks:
        classes = len(refs[split])
        if ways > classes:
            too_few_classes.setdefault(ways, []).append((split, classes))
        if classes < 2:
            data_fixes.append(f"give the {split} split 2 classes at least (a task has 2)")
        limit(ways_key, max(classes, 2))  # the settings that fit once the data is fixed as well
    fewest = {split: min(refs[split], key=lambda c: c.count) for split, *_ in checks}
    limit("shots", min(max(c.count, 2) for c in fewest.values()) - 1)  # every task keeps a query image
    shots_fit = max(1, min(shots, limits["shots"]))
    for split, _, _, query_key, query in checks:
        small = fewest[split]
        if shots + query > small.count:
            too_few_images.setdefault(query, []).append((split, small))
        if small.count < 2:
            data_fixes.append(f"add images to class {small.name!r} of the {split} split or remove it "
                              f"(a class needs 2 at least: one to learn from, one to test on)")
        limit(query_key, max(small.count, 2) - shots_fit)
    problems = []
    for ways, where in too_few_classes.items():
        (split, classes), *others = where
        problems.append(f"{ways}-way tasks need {ways} classes but the {split} split has {classes}"
                        + "".join(f", the {s} split {n}" for s, n in others))
    for query, where in too_few_images.items():
        (split, small), *others = where
        problems.append(f"{shots}-shot tasks with {query} quer{'y' if query == 1 else 'ies'} need {shots + query} "
                        f"images per class, but class {small.name!r} of the {split} split has {small.count}"
                        + "".join(f", class {c.name!r} of the {s} split {c.count}" for s, c in others))
    if not problems:
        return
    values = {key: value for _, ways_key, ways, query_key, query in checks
              for key, value in ((ways_key, ways), (query_key, query))}
    values["shots"] = shots
    settings = [f"--set {key}={limits[key]}" for key in ("ways", "eval_ways", "shots", "query", "eval_query")
                if key in values and values[key] > limits[key]]
    fixes = list(dict.fromkeys(data_fixes))
    if settings:
        setting = " ".join(settings)
        fixes.append(setting if training else f"train with {setting} (a run's task settings are fixed at "
                                              f"training), or use data with more classes and images")
    raise FewshotError(f"{'; '.join(problems)}; fix: {'; '.join(fixes)}")


def preprocessing(dataset: ImageDataset | None, config: Config) -> dict | None:
    """How stored pixels become the model's input (also saved with checkpoints, for predict):
    channels, Omniglot's inversion, and the meta-train split's per-channel mean and std; and
    the kind of data they are (so that `fewshot eval --data` knows what the run was trained on)."""
    if dataset is None:
        return None
    meta = dataset.meta
    normalize = meta.get("mean") is not None and len(meta["mean"]) == config.channels
    return {"dataset": meta.get("dataset"), "invert": bool(meta.get("invert", False)), "size": config.image_size,
            "channels": config.channels, "mean": meta["mean"] if normalize else None,
            "std": meta["std"] if normalize else None}


def __getattr__(name):
    # the samplers and tasks need torch: imported on first use, not with the package
    if name in ("EpisodeSampler", "Prefetcher", "Task"):
        from . import episodes
        return getattr(episodes, name)
    if name == "SinusoidSampler":
        from .sinusoid import SinusoidSampler
        return SinusoidSampler
    raise AttributeError(f"module 'fewshot.data' has no attribute {name!r}")


__all__ = ["DATASETS", "SPLITS", "DatasetKind", "EpisodeSampler", "Prefetcher", "SinusoidSampler", "Task",
           "check_tasks_fit", "kind", "load", "preprocessing", "resolve", "sampler"]
