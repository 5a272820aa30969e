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
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())
        if size is None:  # the index alone
            return ImageDataset(folder, None, [ImageClass(**c) for c in index["classes"]], index["meta"])
        images = np.load(folder / array_name(size), mmap_mode="r")
    except FileNotFoundError as error:
        raise FewshotError(f"{folder} has no prepared data at size {size} ({Path(error.filename).name} "
                           f"missing); prepare it with `fewshot data ...`") from None
    except (ValueError, OSError, json.JSONDecodeError) as error:
        raise FewshotError(f"the cache in {folder} is corrupt ({error}); delete the folder and "
                           f"prepare the data again") from None
    classes = [ImageClass(**c) for c in index["classes"]]
    if images.ndim != 4 or images.dtype != np.uint8 or sum(c.count for c in classes) != len(images):
        raise FewshotError(f"the cache in {folder} does not match its index; delete the folder and "
                           f"prepare the data again")
    return ImageDataset(folder, images, classes, index["meta"])


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
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())
        features = np.load(folder / features_name(dim), mmap_mode="r")
    except FileNotFoundError as error:
        raise FewshotError(f"{folder} has no prepared features of dimension {dim} ({Path(error.filename).name} "
                           f"missing); import the embeddings again, or set embedding_dim to their size") from None
    except (ValueError, OSError, json.JSONDecodeError) as error:
        raise FewshotError(f"the cache in {folder} is corrupt ({error}); delete the folder and "
                           f"prepare the data again") from None
    classes = [ImageClass(**c) for c in index["classes"]]
    if features.ndim != 2 or features.dtype != np.float32 or sum(c.count for c in classes) != len(features):
        raise FewshotError(f"the cache in {folder} does not match its index; delete the folder and "
                           f"prepare the data again")
    return ImageDataset(folder, features, classes, index["meta"])
