"""The cached image array every image dataset becomes.

A dataset folder holds `images-<size>.npy` (uint8, N x C x H x W, memory-mapped
on load) and `index.json` listing its classes; each class's images are
contiguous rows [start, start + count). Decoding happens once, at import.

Feature datasets (precomputed embeddings, see embeddings.py) use the same folder
layout with `features-<dim>.npy` (float32, N x dim) in place of the image array.
"""
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FewshotError
from ..files import atomic_path, write_text

INDEX = "index.json"


@dataclass
class ImageClass:
    """A class of a prepared dataset: rows [start, start + count) of its array. A split
    lists its classes as ImageClass too, where a class may be a stored class turned by
    `rotation` quarter turns (Omniglot's extra meta-training classes)."""
    name: str
    group: str          # where it came from: "background"/"evaluation" for Omniglot, a split name for others
    start: int
    count: int
    info: dict = field(default_factory=dict)
    rotation: int = 0   # quarter turns; only in a split's classes, never in index.json

    def stored(self) -> dict:
        """The entry index.json holds for this class."""
        return {"name": self.name, "group": self.group, "start": self.start, "count": self.count, "info": self.info}


@dataclass
class ImageDataset:
    root: Path
    images: np.ndarray  # uint8, N x C x H x W
    classes: list
    meta: dict

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def home() -> Path:
    """Where prepared datasets live unless a command names another root."""
    return Path(os.environ.get("FEWSHOT_HOME", Path.home() / ".cache" / "fewshot")).expanduser()


def array_name(size: int) -> str:
    return f"images-{size}.npy"


def features_name(dim: int) -> str:
    return f"features-{dim}.npy"


def is_prepared(folder: str | Path, size: int | None = None) -> bool:
    """Whether `folder` holds a prepared dataset (at image size, or feature dimension, `size`)."""
    folder = Path(folder)
    if not (folder / INDEX).is_file():
        return False
    return size is None or (folder / array_name(size)).is_file() or (folder / features_name(size)).is_file()


def fingerprint(*sources: str | Path | None) -> str:
    """A digest of the names, sizes and modification times of every file under `sources`
    (files or folders; None is skipped): it changes whenever a source file does."""
    digest = hashlib.sha1()
    for source in sources:
        if source is None:
            continue
        source = Path(source)
        if source.is_file():
            listing = [(source.name, source)]
        else:
            listing = []
            for parent, dirs, files in os.walk(source):
                dirs.sort()
                listing += [(os.path.relpath(os.path.join(parent, f), source), Path(parent, f)) for f in sorted(files)]
        digest.update(os.fsencode(str(source)) + b"\0")
        for name, path in listing:
            try:
                stat = path.stat()
            except OSError:  # a dangling link or a file that went away: its name still counts
                stat = None
            digest.update(os.fsencode(name) + (f"\0{stat.st_size}\0{stat.st_mtime_ns}\n" if stat else "\0-\n").encode())
    return digest.hexdigest()[:16]


def _source_fingerprint(meta):
    return fingerprint(meta["source"], meta.get("csv_dir")) if meta.get("source") else None


SIZE_STATS = ("mean", "std")  # the meta entries that depend on the image size


def write_dataset(folder: str | Path, images: np.ndarray, classes: list[ImageClass], meta: dict[str, Any]) -> None:
    """Write the array first and the index last, each atomically: a folder with an
    index is always complete. A folder prepared at other sizes keeps those arrays when
    they hold the same classes from the same unchanged source (the index then lists
    every size, with each size's pixel statistics); otherwise they are stale and removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = images.shape[-1]
    meta = {**meta, "fingerprint": _source_fingerprint(meta)}
    with atomic_path(folder / array_name(size)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(images, dtype=np.uint8))
    index = {"meta": meta, "classes": [c.stored() for c in classes]}
    stats = {str(size): {k: meta.get(k) for k in SIZE_STATS}}
    sizes = {size}
    if (folder / INDEX).is_file():
        try:
            old = json.loads((folder / INDEX).read_text())
            same = (old["classes"] == index["classes"] and old["meta"].get("fingerprint") == meta["fingerprint"]
                    and old["meta"].get("source") == meta.get("source"))
            old_sizes = [int(s) for s in old["meta"].get("sizes", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            same, old_sizes = False, []
        for old_size in old_sizes:
            if old_size == size:
                continue
            if same:
                sizes.add(old_size)
                stats[str(old_size)] = old["meta"].get("stats", {}).get(
                    str(old_size), {k: old["meta"].get(k) for k in SIZE_STATS})
            elif (folder / array_name(old_size)).is_file():
                (folder / array_name(old_size)).unlink()  # another source's pixels: never read with this index
    index["meta"]["sizes"] = sorted(sizes)
    index["meta"]["stats"] = stats
    write_text(folder / INDEX, json.dumps(index, indent=1))


def read_dataset(folder: str | Path, size: int | None) -> ImageDataset:
    """The prepared images at `size` (uint8 N x C x H x W, memory-mapped); size None: the index alone."""
    if size is None:
        index = _read_index(Path(folder))
        return ImageDataset(Path(folder), None, _classes(index, Path(folder)), index["meta"])
    return _read_array(folder, array_name(size), ndim=4, dtype=np.uint8,
                       missing=f"has no prepared data at size {size}", fix="prepare it with `fewshot data ...`")


def _read_index(folder):
    try:
        index = json.loads((folder / INDEX).read_text())
    except FileNotFoundError:
        raise FewshotError(f"{folder} has no {INDEX}; prepare it with `fewshot data ...`") from None
    except (ValueError, OSError) as error:
        raise FewshotError(f"the cache in {folder} is corrupt ({error}); delete the folder and "
                           f"prepare the data again") from None
    if not isinstance(index, dict) or not isinstance(index.get("meta"), dict) or \
            not isinstance(index.get("classes"), list):
        raise FewshotError(f"the cache in {folder} is corrupt ({INDEX} lacks its meta or classes); delete the "
                           f"folder and prepare the data again")
    return index


def _classes(index, folder, rows=None):
    """The index's classes, checked: whole numbers, each class inside the array (`rows` long)."""
    fields = {"name", "group", "start", "count", "info"}
    classes = []
    for entry in index["classes"]:
        if not isinstance(entry, dict) or not {"name", "group", "start", "count"} <= set(entry) <= fields or \
                not all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in ("start", "count")):
            raise FewshotError(f"the cache in {folder} is corrupt ({INDEX} has a malformed class entry); delete "
                               f"the folder and prepare the data again")
        c = ImageClass(**entry)
        if c.start < 0 or c.count < 0 or (rows is not None and c.start + c.count > rows):
            raise FewshotError(f"the cache in {folder} does not match its index (class {c.name!r} is rows "
                               f"{c.start}-{c.start + c.count} of {rows if rows is not None else '?'}); delete the "
                               f"folder and prepare the data again")
        classes.append(c)
    return classes


def _read_array(folder, name, ndim, dtype, missing, fix):
    """Index plus one memory-mapped array, checked against each other."""
    folder = Path(folder)
    index = _read_index(folder)
    try:
        array = np.load(folder / name, mmap_mode="r")
    except FileNotFoundError:
        raise FewshotError(f"{folder} {missing} ({name} missing); {fix}") from None
    except (ValueError, OSError) as error:
        raise FewshotError(f"the cache in {folder} is corrupt ({error}); delete the folder and "
                           f"prepare the data again") from None
    if array.ndim != ndim or array.dtype != dtype:
        raise FewshotError(f"the cache in {folder} does not match its index ({name} is {array.dtype} "
                           f"{array.shape}); delete the folder and prepare the data again")
    classes = _classes(index, folder, len(array))
    if sum(c.count for c in classes) != len(array):
        raise FewshotError(f"the cache in {folder} does not match its index; delete the folder and "
                           f"prepare the data again")
    size = re.search(r"-(\d+)\.npy$", name)
    meta = dict(index["meta"])
    stats = meta.get("stats", {}).get(size.group(1)) if size and isinstance(meta.get("stats"), dict) else None
    if isinstance(stats, dict):
        meta.update({k: stats[k] for k in SIZE_STATS if k in stats})  # this size's own pixel statistics
    return ImageDataset(folder, array, classes, meta)


def write_features(folder: str | Path, features: np.ndarray | Sequence[np.ndarray], classes: list[ImageClass],
                   meta: dict[str, Any]) -> None:
    """The float32 variant of write_dataset: `features` is N x dim, rows grouped by class,
    or a list of such blocks written one after another (never all in memory twice)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = features if isinstance(features, (list, tuple)) else [features]
    dim = int(parts[0].shape[-1])
    with atomic_path(folder / features_name(dim)) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(sum(len(part) for part in parts), dim))
        row = 0
        for part in parts:
            out[row:row + len(part)] = part
            row += len(part)
        out.flush()
        del out
    meta = {**meta, "features": True, "sizes": [dim], "fingerprint": _source_fingerprint(meta)}
    for stale in folder.glob("features-*.npy"):  # another import's features: never read with this index
        if stale.name != features_name(dim):
            stale.unlink()
    write_text(folder / INDEX, json.dumps({"meta": meta, "classes": [c.stored() for c in classes]}, indent=1))


def read_features(folder: str | Path, dim: int) -> ImageDataset:
    """A feature dataset: `images` holds the float32 N x dim array, memory-mapped."""
    return _read_array(folder, features_name(dim), ndim=2, dtype=np.float32,
                       missing=f"has no prepared features of dimension {dim}",
                       fix="import the embeddings again, or set embedding_dim to their size")
