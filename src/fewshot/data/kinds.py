"""Dataset kinds by name: what `dataset: NAME` in a config means.

Each kind is one module of this package that registers a `DatasetKind` in
`DATASETS` (see omniglot.py, miniimagenet.py, folder.py, embeddings.py,
sinusoid.py). Adding a dataset is one such file plus its module name below.
The registry imports these modules on its first lookup; none of them imports
torch at import time, so naming the kinds stays cheap (`fewshot --help`,
config checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..registry import Registry

if TYPE_CHECKING:
    from ..config import Config
    from .images import ImageDataset

SPLITS = ("train", "val", "test")  # the three class splits every dataset has, in this order

DATASETS = Registry("dataset", modules=[f"fewshot.data.{name}" for name in
                                        ("omniglot", "miniimagenet", "folder", "embeddings", "sinusoid")])


def no_options(meta: dict) -> dict:
    return {}


def same_path(path: Path, config: Config) -> Path:
    return path


@dataclass(frozen=True)
class EpisodeRule:
    """How a split's tasks are drawn beyond N-way K-shot from all its classes."""
    within_alphabet: bool = False  # a task's classes all from one alphabet (DatasetKind.alphabet)
    same_drawers: bool = False     # the same image positions (Omniglot: drawers) in every class of a task
    alone: bool = False            # at evaluation each query is classified on its own, not in a batch
    distort: bool = False          # each image through its own random affine map (meta-training only)


def plain_episodes(config: Config, split: str) -> EpisodeRule:
    return EpisodeRule(distort=split == "train" and config.affine_distortion)


# the keys every kind of stored images reads: how its meta-train episodes are drawn, and how its images
# are augmented at meta-test
STORED_IMAGE_READS = frozenset({"affine_distortion", "eval_shift"})


@dataclass
class DatasetKind:
    """One dataset kind. Stored kinds have `prepare` (a raw copy -> a prepared folder,
    see images.py) and `splits`; generated kinds have `sampler` instead."""
    name: str
    # (source, folder, size=, progress=, **options) -> folder: decode a raw copy once into the cached array
    prepare: Callable | None = None
    # (dataset, split name from the config) -> {"train" | "val" | "test": [ImageClass, ...]}
    splits: Callable | None = None
    # stored as float features (precomputed embeddings): the "size" is the feature dimension
    features: bool = False
    # the image side `fewshot data` prepares when given no --size
    default_size: int | None = None
    # a prepared folder's meta -> the options that decode its source again identically (at another size)
    import_options: Callable = no_options
    # (path, config) -> the folder that `--data PATH` means for this kind
    locate: Callable = same_path
    # generated kinds: (config, split, seed, query, dtype) -> a sampler with .batch(index, size, part)
    sampler: Callable | None = None
    # (ImageClass of a split) -> its alphabet, for tasks within one alphabet; None: the kind has none
    alphabet: Callable | None = None
    # (config, split) -> the EpisodeRule of that split's tasks
    episodes: Callable = plain_episodes
    # the config keys read_by the dataset (config.Config) that this kind reads: set away from
    # their defaults for a kind that does not list them, they are refused
    reads: frozenset = frozenset()

    @property
    def generated(self) -> bool:
        return self.prepare is None


def group_splits(dataset: ImageDataset, name: str | None = None) -> dict:
    """The split of a dataset whose classes carry it in their group (folder, miniImageNet,
    embeddings: fixed at import). `name` (the config's `split`) does not apply to them."""
    return {split: [c for c in dataset.classes if c.group == split] for split in SPLITS}
