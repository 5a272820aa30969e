"""A user's own images: a tree of class folders, `<DIR>/<class>/<image>`, or
`<DIR>/{train,val,test}/<class>/<image>` when the user has split it.

An unsplit tree is split by class with seeded ratios, and each split that the ratios
give a share keeps at least LEAST_CLASSES classes while the others can spare them, so
that a handful of classes (6) still gives a validation and a test split that can
hold a 2-way task. A split left with fewer is reported at import.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import FewshotError
from ..reading import CONTENT_ERRORS, convert_image, decode_image, failure
from .images import ImageClass, write_dataset
from .kinds import DATASETS, STORED_IMAGE_READS, SPLITS, DatasetKind, group_splits

if TYPE_CHECKING:
    from .images import ImageDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_SIZE = 28
RATIOS = (0.64, 0.16, 0.20)  # train, val, test
LEAST_CLASSES = 2  # a task has 2 classes at least: a split with a share should hold that many


def image_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(source: str | Path | bytes, size: int, channels: int, where: str | Path | None = None) -> np.ndarray:
    """An image file (or its bytes, named `where`) of any size and mode -> uint8 C x size x
    size, converted as at training time. An image that cannot be decoded or converted, or
    too large to decode, is one error naming it."""
    path = source if where is None else where
    image = decode_image(source, path)
    with image, failure(path, "image", "remove or replace it"):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # wide gray: scale, don't clip
            wide = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(wide.max()), 1.0)
            image = Image.fromarray(np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        image = convert_image(image, "L" if channels == 1 else "RGB", path)
        if image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def class_folders(root: str | Path) -> dict[str, list[Path]]:
    """{split: [class folder, ...]}; a single "all" split when the tree is not split."""
    root = Path(root)
    if not root.is_dir():
        raise FewshotError(f"{root} is not a folder; give a folder of class folders <DIR>/<class>/<image>")
    if any((root / s).is_dir() for s in SPLITS):
        found = {s: sorted(p for p in (root / s).iterdir() if p.is_dir()) for s in SPLITS if (root / s).is_dir()}
    else:
        found = {"all": sorted(p for p in root.iterdir() if p.is_dir())}
    # a class is a folder holding images: loose files (a curves.png, notes) at the class level are not classes
    found = {s: [c for c in classes if image_files(c)] for s, classes in found.items()}
    seen = {}
    for split, classes in found.items():
        for c in classes:
            if seen.setdefault(c.name, split) != split:
                raise FewshotError(f"class {c.name!r} is in both {root / seen[c.name]} and {root / split}; a class "
                                   f"must be in one split only (its images would leak between meta-training and "
                                   f"testing): rename or remove one of the two folders")
    if not any(found.values()):
        raise FewshotError(f"{root} holds no class folders with images; expected <DIR>/<class>/<image> "
                           f"or <DIR>/{{train,val,test}}/<class>/<image>")
    return found


def split_counts(total: int, ratios: tuple, least: int = LEAST_CLASSES) -> list[int]:
    """Classes per split (train, val, test): by the ratios, then each split with a share
    topped up to `least` (train first, then val, then test) from the split that has the
    most to spare above its own minimum, while one has any."""
    n_train = min(round(ratios[0] * total), total)
    n_val = min(round(ratios[1] * total), total - n_train)  # rounding up twice must not overdraw the test split
    counts = [n_train, n_val, total - n_train - n_val]
    floor = [least if ratio > 0 else 0 for ratio in ratios]
    for split in range(3):
        while counts[split] < floor[split]:
            spare = [counts[s] - floor[s] for s in range(3)]
            donor = max(range(3), key=lambda s: spare[s])
            if spare[donor] <= 0:
                break
            counts[donor] -= 1
            counts[split] += 1
    return counts


def split_classes(names: list[str], ratios: tuple, seed: int, least: int = LEAST_CLASSES) -> dict[str, str]:
    """Seeded split of class names by ratios (train, val, test), each split with a share
    holding `least` classes where the others can spare them (0: the ratios alone, as
    imports before that rule were split)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise FewshotError(f"--ratios takes three ratios that sum to 1 (train,val,test), got {ratios}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_train, n_val, _ = split_counts(len(names), ratios, least)
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return {names[i]: split for split, part in zip(SPLITS, parts) for i in part}


def small_split_note(counts: dict[str, int], wanted: Iterable[str] = SPLITS) -> str | None:
    """One line when a split in `wanted` has too few classes for any task, else None."""
    small = [f"the {split} split has {counts.get(split, 0)} class{'' if counts.get(split, 0) == 1 else 'es'}"
             for split in wanted if counts.get(split, 0) < LEAST_CLASSES]
    if not small:
        return None
    return (f"note: {' and '.join(small)}, too few for any task ({LEAST_CLASSES}-way at least); training "
            f"needs train and val, `fewshot eval` test: add class folders ({3 * LEAST_CLASSES} classes give "
            f"{LEAST_CLASSES} to each split), or split them yourself as <DIR>/{{train,val,test}}/<class>/")


def import_folder(source: str | Path, folder: Path, size: int = IMAGE_SIZE, channels: int | None = None,
                  ratios: tuple = RATIOS, seed: int = 0, progress: bool = True, least: int = LEAST_CLASSES) -> Path:
    """Decode the class folders of `source` once into the cached array in `folder`. An
    unsplit tree is split by `ratios` and `seed` (see split_classes, and `least`)."""
    found = class_folders(source)
    files = [(split, c, f) for split, classes in found.items() for c in classes for f in image_files(c)]
    if channels is None:  # keep colour only if the images have it
        channels = 3 if any(_is_colour(f) for _, _, f in files) else 1  # headers only: cheap
    if "all" in found:
        assignment = split_classes([c.name for c in found["all"]], ratios, seed, least)
    images, classes = [], []
    for split, class_dir in ((s, c) for s, cs in found.items() for c in cs):
        paths = image_files(class_dir)
        group = assignment[class_dir.name] if split == "all" else split
        classes.append(ImageClass(class_dir.name, group, len(images), len(paths), {}))
        images.extend(load_image(p, size, channels) for p in tqdm(
            paths, desc=f"reading {class_dir.name}", unit="img", disable=not progress, leave=False))
    meta = {"dataset": "folder", "source": str(Path(source).resolve()), "invert": False, "channels": channels,
            "ratios": list(ratios), "seed": seed, "least": least}
    write_dataset(folder, np.stack(images), classes, meta)
    counts = {split: sum(c.group == split for c in classes) for split in SPLITS}
    # an unsplit tree: the splits its ratios give a share; a split tree: the ones it has folders for
    wanted = [s for s, r in zip(SPLITS, ratios) if r > 0] if "all" in found else [s for s in SPLITS if s in found]
    note = small_split_note(counts, wanted)
    if note:
        print(note, file=sys.stderr)
    return folder


def import_options(meta: dict) -> dict:
    """The options that decode a prepared folder dataset's source again with the same split."""
    options = {key: meta[key] for key in ("seed", "channels") if key in meta}
    if "ratios" in meta:
        options["ratios"] = tuple(meta["ratios"])
    options["least"] = meta.get("least", 0)  # imported before the rule: split by the ratios alone
    return options


def _is_colour(path):
    try:
        with Image.open(path) as image:
            return image.mode not in ("1", "L", "LA", "I", "I;16", "F")
    except CONTENT_ERRORS + (Image.DecompressionBombError,):
        return False  # reported with its name when it is read


def splits(dataset: ImageDataset, name: str | None = None, seed: int | None = None) -> dict[str, list[ImageClass]]:
    """Folder datasets carry their split in each class's group."""
    return group_splits(dataset)


FOLDER = DATASETS.register("folder")(DatasetKind(
    "folder", prepare=import_folder, splits=splits, default_size=IMAGE_SIZE, import_options=import_options,
    reads=STORED_IMAGE_READS))
