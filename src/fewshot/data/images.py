"""The cached image array every image dataset becomes.

A dataset folder holds `images-<size>.npy` (uint8, N x C x H x W, memory-mapped
on load) and `index.json` listing its classes; each class's images are
contiguous rows [start, start + count). Decoding happens once, at import.

Feature datasets (precomputed embeddings, see embeddings.py) use the same folder
layout with `features-<dim>.npy` (float32, N x dim) in place of the image array.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FewshotError
from ..io import atomic_path, write_text

INDEX = "index.json"


@dataclass
class ImageClass:
    name: str
    group: str          # where it came from: "background"/"evaluation" for Omniglot, a split name for others
    start: int
    count: int
    info: dict = field(default_factory=dict)


@dataclass
class ImageDataset:
    root: Path
    images: np.ndarray  # uint8, N x C x H x W
    classes: list
    meta: dict

    @property
    def image_size(self):
        return self.images.shape[-1]


def home():
    """Where prepared datasets live unless a command names another root."""
    return Path(os.environ.get("FEWSHOT_HOME", Path.home() / ".cache" / "fewshot")).expanduser()


def array_name(size):
    return f"images-{size}.npy"


def features_name(dim):
    return f"features-{dim}.npy"


def is_prepared(folder, size=None):
    """Whether `folder` holds a prepared dataset (at image size, or feature dimension, `size`)."""
    folder = Path(folder)
    if not (folder / INDEX).is_file():
        return False
    return size is None or (folder / array_name(size)).is_file() or (folder / features_name(size)).is_file()


def write_dataset(folder, images, classes, meta):
    """Write the array first and the index last, each atomically: a folder with an
    index is always complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = images.shape[-1]
    with atomic_path(folder / array_name(size)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(images, dtype=np.uint8))
    index = {"meta": meta, "classes": [vars(c) for c in classes]}
    if (folder / INDEX).is_file():
        old = json.loads((folder / INDEX).read_text())
        old_sizes = old["meta"].get("sizes", [])
        index["meta"]["sizes"] = sorted(set(old_sizes) | {size})
    else:
        index["meta"]["sizes"] = [size]
    write_text(folder / INDEX, json.dumps(index, indent=1))


def read_dataset(folder, size):
    """The prepared images at `size` (uint8 N x C x H x W, memory-mapped); size None: the index alone."""
    if size is None:
        index = _read_index(Path(folder))
        return ImageDataset(Path(folder), None, [ImageClass(**c) for c in index["classes"]], index["meta"])
    return _read_array(folder, array_name(size), ndim=4, dtype=np.uint8,
                       missing=f"has no prepared data at size {size}", fix="prepare it with `fewshot data ...`")


def _read_index(folder):
    try:
        return json.loads((folder / INDEX).read_text())
    except FileNotFoundError:
        raise FewshotError(f"{folder} has no {INDEX}; prepare it with `fewshot data ...`") from None
    except (ValueError, OSError) as error:
        raise FewshotError(f"the cache in {folder} is corrupt ({error}); delete the folder and "
                           f"prepare the data again") from None


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
    classes = [ImageClass(**c) for c in index["classes"]]
    if array.ndim != ndim or array.dtype != dtype or sum(c.count for c in classes) != len(array):
        raise FewshotError(f"the cache in {folder} does not match its index; delete the folder and "
                           f"prepare the data again")
    return ImageDataset(folder, array, classes, index["meta"])


def write_features(folder, features, classes, meta):
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
    meta = {**meta, "features": True, "sizes": [dim]}
    write_text(folder / INDEX, json.dumps({"meta": meta, "classes": [vars(c) for c in classes]}, indent=1))


def read_features(folder, dim):
    """A feature dataset: `images` holds the float32 N x dim array, memory-mapped."""
    return _read_array(folder, features_name(dim), ndim=2, dtype=np.float32,
                       missing=f"has no prepared features of dimension {dim}",
                       fix="import the embeddings again, or set embedding_dim to their size")
