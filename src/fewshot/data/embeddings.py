"""Precomputed image embeddings in the format of LEO (Rusu et al., ICLR 2019).

The format, as the LEO reference code reads it (github.com/deepmind/leo, `data.py`,
class `DataProvider`: `_get_full_pickle_path`, `_load`, `_index_data`,
`_check_data_index`, `get_instance`):

- files `<data_path>/<dataset_name>/<embedding_crop>/<split>_embeddings.pkl`, with
  `dataset_name` miniImageNet or tieredImageNet, `embedding_crop` center or
  multiview (tieredImageNet: center only) and `split` train, val or test;
- each a pickle (Python 2 era; read under Python 3 with `encoding="latin1"`) of a
  dict: `embeddings`, a float array N x 640 (`NDIM = 640`); `keys`, an array of N
  image keys; `labels`, one label per row (the reference never reads it);
- a key is `<prefix>-<class>-<image file>`: three fields split on "-", the image
  file starting with `<class>_` (the reference asserts
  `class == image_file.split("_")[0]`), e.g. `1-n01532829-n01532829_10003.JPEG`.
  Keys may be str or bytes (the multiview files hold bytes);
- the reference L2-normalizes every embedding when it samples a task
  (`tf.nn.l2_normalize(instance_input, axis=-1)`); here the cache keeps the values
  as stored and the LEO algorithm normalizes its inputs.

`import_embeddings` turns such a folder into the cached dataset every fewshot
dataset becomes (see images.py), with `features-<dim>.npy` (float32, N x dim,
memory-mapped) in place of images: classes contiguous, sorted by name within a
split, each class's rows in file order, group = split. A file whose dimension
or keys do not match is refused with its name. `write_leo_pickles` writes the
same format (for `fewshot embed`, and for tests).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import FewshotError
from ..reading import array, brief, failure, listed, load_pickle
from .images import ImageClass, is_prepared, write_features
from .kinds import DATASETS, SPLITS, DatasetKind, group_splits

if TYPE_CHECKING:
    import numpy.typing as npt

    from ..config import Config
    from .images import ImageDataset

NDIM = 640  # the reference's embedding dimension (WRN-28-10 features)
CROPS = ("center", "multiview")
KEY_FORMAT = "<prefix>-<class>-<class>_<image>"


def file_name(split: str) -> str:
    return f"{split}_embeddings.pkl"


def has_pickles(folder: str | Path) -> bool:
    return any((Path(folder) / file_name(split)).is_file() for split in SPLITS)


def locate(path: str | Path, crop: str = "center", dataset_name: str | None = None) -> Path:
    """The folder that `--data PATH` means: a prepared cache or a folder of the pickles
    as it is, else PATH/<crop>, else PATH/<dataset_name>/<crop> (the reference's data_path)."""
    path = Path(path)
    if is_prepared(path) or has_pickles(path):
        return path
    candidates = [path / str(crop)] + ([path / str(dataset_name) / str(crop)] if dataset_name else [])
    for candidate in candidates:
        if has_pickles(candidate):
            return candidate
    return path


def parse_key(key: object, path: str | Path) -> tuple[str, str]:
    """(class, image file) from one LEO key, or a FewshotError naming the file."""
    if isinstance(key, (bytes, np.bytes_)):
        key = bytes(key).decode("latin1")
    key = str(key)
    fields = key.split("-")
    if len(fields) != 3 or not fields[1] or fields[2].split("_")[0] != fields[1]:
        raise FewshotError(f"{path}: key {brief(key)} is not in LEO's key format {KEY_FORMAT} (three fields "
                           f"split on '-', the image file starting with its class and '_'); these are not "
                           f"LEO embedding files, or they were written with another key format")
    return fields[1], fields[2]


def read_pickle(path: str | Path, dim: int = NDIM) -> tuple[np.ndarray, list[str]]:
    """(embeddings N x dim float32, [class per row]) from one `<split>_embeddings.pkl`."""
    path = Path(path)
    data = load_pickle(path, "a LEO embedding file")
    with failure(path, "the LEO embedding file", "it is damaged or in another format: write it again "
                 "(e.g. with `fewshot embed`)"):
        return _interpret(data, path, dim)


def _interpret(data, path, dim):
    if isinstance(data, dict):
        data = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}
    if not isinstance(data, dict) or "embeddings" not in data or "keys" not in data:
        found = listed(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise FewshotError(f"{path} holds {found if data else 'an empty dict'}; a LEO embedding file is a dict "
                           f"with embeddings (N x {dim}), labels and keys")
    embeddings = array(data["embeddings"], path, "the embeddings of")
    if embeddings.ndim != 2 or embeddings.dtype.kind not in "fiu":
        raise FewshotError(f"{path}: embeddings have shape {embeddings.shape} ({embeddings.dtype}); "
                           f"expected a float array N x {dim}")
    if embeddings.shape[1] != dim:
        raise FewshotError(f"{path}: embeddings have dimension {embeddings.shape[1]}, expected {dim}; set "
                           f"embedding_dim={embeddings.shape[1]} (--set embedding_dim={embeddings.shape[1]}) "
                           f"or use embeddings of dimension {dim}")
    if embeddings.dtype.kind == "f":
        bad = ~np.isfinite(embeddings).all(axis=1)
        if bad.any():
            raise FewshotError(f"{path}: {int(bad.sum())} of {len(embeddings)} embeddings hold NaN or infinite "
                               f"values (first row {int(np.flatnonzero(bad)[0])}); the file is damaged: write it "
                               f"again (e.g. with `fewshot embed`)")
    keys = array(data["keys"], path, "the keys of").ravel()
    if len(keys) != len(embeddings):
        raise FewshotError(f"{path}: {len(keys)} keys for {len(embeddings)} embeddings; the file is damaged")
    labels = data.get("labels")
    if labels is not None and len(array(labels, path, "the labels of").ravel()) != len(embeddings):
        raise FewshotError(f"{path}: {len(array(labels, path, 'the labels of').ravel())} labels for "
                           f"{len(embeddings)} embeddings; the file is damaged")
    classes = [parse_key(key, path)[0] for key in keys]
    return embeddings.astype(np.float32, copy=False), classes


def import_embeddings(source: str | Path, folder: Path, size: int = NDIM, progress: bool = True) -> Path:
    """Read `source`/{train,val,test}_embeddings.pkl into the cached feature array in
    `folder` (`size`: the embedding dimension the files must have); returns `folder`."""
    source = Path(source).expanduser()
    missing = [file_name(s) for s in SPLITS if not (source / file_name(s)).is_file()]
    if missing:
        raise FewshotError(f"{source} lacks {', '.join(missing)}; expected LEO's {', '.join(map(file_name, SPLITS))} "
                           f"(a folder such as embeddings/miniImageNet/center)")
    parts, classes, seen, counts, rows = [], [], {}, {}, 0
    for split in tqdm(SPLITS, desc="import embeddings", unit="split", disable=not progress):
        path = source / file_name(split)
        embeddings, labels = read_pickle(path, size)
        by_class = {}
        for row, name in enumerate(labels):
            by_class.setdefault(name, []).append(row)
        for name in sorted(by_class):
            if name in seen:
                raise FewshotError(f"class {name} is in both {file_name(seen[name])} and {path.name} in "
                                   f"{source}; the splits must hold disjoint classes")
            seen[name] = split
            classes.append(ImageClass(name, split, rows, len(by_class[name]), {}))
            rows += len(by_class[name])
        order = np.concatenate([np.asarray(by_class[name]) for name in sorted(by_class)]) if by_class \
            else np.zeros(0, np.int64)
        parts.append(np.ascontiguousarray(embeddings[order]))
        del embeddings
        sizes = [len(v) for v in by_class.values()]
        counts[split] = {"classes": len(sizes), "images": sum(sizes), "min": min(sizes, default=0),
                         "max": max(sizes, default=0)}
    if not rows:
        raise FewshotError(f"the embedding files in {source} hold no rows")
    meta = {"dataset": "embeddings", "source": str(source.resolve()), "dim": int(size), "invert": False,
            "mean": None, "std": None, "counts": counts}
    write_features(folder, parts, classes, meta)
    return folder


def splits(dataset: ImageDataset, name: str | None = None, seed: int | None = None) -> dict[str, list[ImageClass]]:
    """The split is the file each class came from (its group)."""
    return group_splits(dataset)


def make_key(class_name: str, image: str | int, prefix: int | str = 0) -> str:
    """A key in LEO's format for image `image` (a file name or number) of class `class_name`."""
    return f"{prefix}-{class_name}-{class_name}_{image}"


def write_leo_pickles(folder: str | Path, split: str, embeddings: npt.ArrayLike, labels: npt.ArrayLike,
                      keys: Iterable[str]) -> Path:
    """Write `folder`/<split>_embeddings.pkl in LEO's format: a dict of `embeddings`
    (float32 N x dim), `labels` (N) and `keys` (N strings, see KEY_FORMAT); returns its path."""
    from ..files import atomic_path
    if split not in SPLITS:
        raise FewshotError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = Path(folder) / file_name(split)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    keys = np.asarray([str(k) for k in keys])
    labels = np.asarray(labels)
    if embeddings.ndim != 2:
        raise FewshotError(f"{path}: embeddings must be N x dim, got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise FewshotError(f"{path}: {int((~np.isfinite(embeddings).all(axis=1)).sum())} embeddings hold NaN or "
                           f"infinite values (did the pretraining diverge? try a lower --lr); nothing was written")
    if not len(keys) == len(labels) == len(embeddings):
        raise FewshotError(f"{path}: {len(embeddings)} embeddings, {len(labels)} labels and {len(keys)} keys; "
                           f"give one of each per image")
    for key in keys:
        parse_key(key, path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump({"embeddings": embeddings, "labels": labels, "keys": keys}, f, protocol=2)
    return path


def locate_for(path: Path, config: Config) -> Path:
    return locate(path, config.embedding_crop, config.embedding_dataset)


EMBEDDINGS = DATASETS.register("embeddings")(DatasetKind(
    "embeddings", prepare=import_embeddings, splits=splits, features=True, locate=locate_for,
    reads=frozenset({"embedding_dim", "embedding_crop", "embedding_dataset", "image_preset"})))
