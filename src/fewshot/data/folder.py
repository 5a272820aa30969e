"""A user's own images: a tree of class folders, `<DIR>/<class>/<image>`, or
`<DIR>/{train,val,test}/<class>/<image>` when the user has split it."""
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import FewshotError
from .images import ImageClass, write_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")


def image_files(folder):
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path, size, channels):
    """Any size and mode -> uint8 C x size x size, converted as at training time."""
    try:
        with Image.open(path) as image:
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # wide gray: scale, don't clip
                wide = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") else max(float(wide.max()), 1.0)
                image = Image.fromarray(np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.LANCZOS)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise FewshotError(f"cannot read image {path} ({error}); remove or replace it") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def class_folders(root):
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


def split_classes(names, ratios, seed):
    """Seeded split of class names by ratios (train, val, test)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise FewshotError(f"--split takes three ratios that sum to 1 (train,val,test), got {ratios}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = round(ratios[0] * len(names))
    n_val = round(ratios[1] * len(names))
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return {names[i]: split for split, part in zip(SPLITS, parts) for i in part}


def import_folder(source, folder, size=28, channels=None, ratios=(0.64, 0.16, 0.20), seed=0, progress=True):
    found = class_folders(source)
    files = [(split, c, f) for split, classes in found.items() for c in classes for f in image_files(c)]
    if channels is None:  # keep colour only if the images have it
        channels = 3 if any(_is_colour(f) for _, _, f in files) else 1  # headers only: cheap
    if "all" in found:
        assignment = split_classes([c.name for c in found["all"]], ratios, seed)
    images, classes = [], []
    for split, class_dir in ((s, c) for s, cs in found.items() for c in cs):
        paths = image_files(class_dir)
        group = assignment[class_dir.name] if split == "all" else split
        classes.append(ImageClass(class_dir.name, group, len(images), len(paths), {}))
        images.extend(load_image(p, size, channels) for p in tqdm(
            paths, desc=f"reading {class_dir.name}", unit="img", disable=not progress, leave=False))
    meta = {"dataset": "folder", "source": str(Path(source).resolve()), "invert": False, "channels": channels,
            "ratios": list(ratios), "seed": seed}
    write_dataset(folder, np.stack(images), classes, meta)
    return folder


def _is_colour(path):
    try:
        with Image.open(path) as image:
            return image.mode not in ("1", "L", "LA", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError):
        return False  # reported with its name when it is read


def splits(dataset, name=None, seed=None):
    """Folder datasets carry their split in each class's group."""
    refs = {s: [(c.start, c.count, 0, c.name) for c in dataset.classes if c.group == s] for s in SPLITS}
    return refs
