"""Datasets: import once into a cached array, then sample episodes from it."""
import hashlib
from pathlib import Path

import numpy as np

from ..errors import FewshotError
from . import omniglot
from .episodes import EpisodeSampler, Prefetcher, Task
from .images import home, is_prepared, read_dataset

# dataset name -> (import a raw copy into a folder, class splits)
IMPORTERS = {"omniglot": omniglot.import_omniglot}
SPLITTERS = {"omniglot": omniglot.splits}


def resolve(config, progress=True):
    """The prepared folder for `config["data"]`: a prepared folder, a raw copy (imported
    into a cache under FEWSHOT_HOME on first use), or a name under FEWSHOT_HOME."""
    spec, dataset, size = config["data"], config["dataset"], config["image_size"]
    if spec is None:
        raise FewshotError("no data given: pass --data DIR (e.g. ../shared/data/omniglot-28) "
                           "or prepare a copy with `fewshot data omniglot --from PATH`")
    path = Path(spec).expanduser()
    if not path.exists():
        named = home() / str(spec)
        if is_prepared(named):
            path = named
        else:
            raise FewshotError(f"data {spec!r} is neither a folder nor a dataset prepared under {home()}; "
                               f"check the path or run `fewshot data {dataset} --from PATH`")
    if is_prepared(path, size):
        return path
    if is_prepared(path):
        raise FewshotError(f"{path} is prepared, but not at image_size {size}; prepare it again from the "
                           f"raw copy with `fewshot data {dataset} --from RAW --size {size}`")
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    cache = home() / "cache" / f"{dataset}-{key}"
    if not is_prepared(cache, size):
        IMPORTERS[dataset](path, cache, size=size, progress=progress)
    return cache


def load(config, progress=True):
    """(dataset, {split: class refs}) for a config."""
    if config["dataset"] not in IMPORTERS:
        raise FewshotError(f"unknown dataset {config['dataset']!r}; choose one of {', '.join(IMPORTERS)}")
    dataset = read_dataset(resolve(config, progress), config["image_size"])
    if dataset.images.nbytes < (1 << 30):  # small sets live in memory; large ones stay memory-mapped
        dataset.images = np.ascontiguousarray(dataset.images)
    return dataset, SPLITTERS[config["dataset"]](dataset, config["split"])


def sampler(config, dataset, refs, split, seed, query=None, dtype=None):
    import torch
    return EpisodeSampler(dataset.images, refs[split], config["ways"], config["shots"],
                          config["query"] if query is None else query, seed, split=split,
                          invert=dataset.meta.get("invert", False), dtype=dtype or torch.float32)


__all__ = ["EpisodeSampler", "Prefetcher", "Task", "load", "resolve", "sampler"]
