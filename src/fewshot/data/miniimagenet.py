"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split:
64 meta-train, 16 meta-validation and 20 meta-test classes of 600 84x84 colour images.

`import_miniimagenet` reads any of these forms of a copy:

- **images**: `<SOURCE>/images/<filename>.jpg` (or a folder of the JPEGs itself), the
  users' layout, with the split CSVs `train.csv`, `val.csv`, `test.csv` beside
  `images/` or in `csv_dir`;
- **tree**: class folders `<SOURCE>/<any>/<wnid>/<filename>.jpg` at any depth (a
  folder counts when its name is a WordNet id such as `n01532829`), e.g. the
  100-class `train/<wnid>/`, `val/<wnid>/` re-split; the few-shot split still comes
  from the CSVs, in `<SOURCE>` or `csv_dir`;
- **arrays**: one file per split in `<SOURCE>`, named `{split}.{pkl,pickle,npz}` or
  `mini-imagenet-cache-{split}.pkl` with split `train`, `val` or `validation`, `test`:
    * learn2learn's / Ren et al.'s `mini-imagenet-cache-*.pkl`: a dict with
      `image_data` (uint8 N x 84 x 84 x 3) and `class_dict` (wnid -> list of row
      indices); string or bytes keys, Python 2 or 3 pickles;
    * the array form (`.npz`, or a `.pkl` holding a dict): images under `images`,
      `features`, `data` or `x` (uint8, N x H x W x 3 or N x 3 x H x W) and one
      label per image under `labels`, `targets` or `y`, either the class name (the
      wnid) or an integer; integer labels are named by an optional `class_names`
      (or `wnids`) array, else `class<label>` with the split's name in front.
  Pickles are read with an unpickler that only builds numpy arrays and builtin
  containers, so a hostile file cannot run code.

A CSV is `filename,label` (the Ravi files: `n0153282900000005.jpg,n01532829`). A split
whose CSV names images the copy lacks is refused (with the count and the first
names) unless `allow_partial`, which imports the images present; `summary` then
gives each split's classes, images and images per class.

The cache (see images.py) holds the classes contiguously, named by wnid, grouped
by split ("train", "val", "test"), sorted by wnid within a split, each class's
images in the order of its CSV or file. Its meta records the per-channel `mean` and
`std` of the meta-train split (pixels in [0, 1], population std over all pixels).
"""
from __future__ import annotations

import csv
import os
import re
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import FewshotError
from ..reading import array, brief, failure, listed, load_pickle
from .folder import load_image
from .images import ImageClass, write_dataset
from .kinds import DATASETS, STORED_IMAGE_READS, SPLITS, DatasetKind, group_splits

if TYPE_CHECKING:
    from .images import ImageDataset

IMAGE_SIZE = 84
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
WNID = re.compile(r"^n\d{8}$")
WNID_PREFIX = re.compile(r"^n\d{8}(?=\d{8}\.)")  # the Ravi file names: wnid, then an 8-digit index
JPEG_SUFFIXES = {".jpg", ".jpeg"}
CSV_COLUMNS = ["filename", "label"]
ARRAY_FILE = re.compile(r"^(?:mini-?imagenet-cache-|mini-?imagenet[-_])?(train|val|validation|test)"
                        r"\.(pkl|pickle|npz)$", re.IGNORECASE)
IMAGE_KEYS = ("image_data", "images", "features", "data", "x")
LABEL_KEYS = ("labels", "targets", "y")
NAME_KEYS = ("class_names", "wnids")
SHOW_MISSING = 5
LAYOUT_HINT = ("expected images/<filename>.jpg beside train.csv, val.csv, test.csv; class folders "
               "<any>/<wnid>/<filename>.jpg with the CSVs; or mini-imagenet-cache-{train,validation,test}.pkl "
               "or {train,val,test}.npz")


def import_miniimagenet(source: str | Path, folder: Path, size: int = IMAGE_SIZE, progress: bool = True,
                        csv_dir: str | Path | None = None, allow_partial: bool = False) -> Path:
    """Decode `source` (any form above) once into the cached array in `folder`; returns `folder`.
    `csv_dir` holds train.csv, val.csv, test.csv when they are not in `source`."""
    source = Path(source).expanduser()
    if not source.exists():
        raise FewshotError(f"{source} does not exist; {LAYOUT_HINT}")
    arrays = array_files(source)
    if arrays:
        form = "arrays"
        splits, partial = read_arrays(arrays, size, progress, allow_partial)
    else:
        form, splits, partial = _read_jpegs(source, size, progress, csv_dir, allow_partial)
    if not any(images for images in splits.values()):
        raise FewshotError(f"{source} holds none of the miniImageNet images its split names; {LAYOUT_HINT}")

    classes, rows = [], 0
    for split in SPLITS:
        for name in sorted(splits.get(split, {})):
            count = len(splits[split][name])
            classes.append(ImageClass(name, split, rows, count, {}))
            rows += count
    images = np.empty((rows, 3, size, size), np.uint8)
    paths = []
    for c in classes:
        for i, item in enumerate(splits[c.group][c.name]):
            if isinstance(item, Path):
                paths.append((c.start + i, item))
            else:
                images[c.start + i] = item
    del splits
    _decode_into(images, paths, size, progress)
    train_rows = [(c.start, c.count) for c in classes if c.group == "train"]
    stats_from = "train" if train_rows else "all"
    mean, std = channel_stats(images, train_rows or [(0, rows)])
    counts = {}
    for split in SPLITS:
        sizes = [c.count for c in classes if c.group == split]
        counts[split] = {"classes": len(sizes), "images": sum(sizes), "min": min(sizes, default=0),
                         "max": max(sizes, default=0), **partial.get(split, {})}
    meta = {"dataset": "miniimagenet", "source": str(source.resolve()), "form": form,
            "csv_dir": str(Path(csv_dir).expanduser().resolve()) if csv_dir else None,
            "allow_partial": bool(allow_partial), "invert": False, "channels": 3,
            "mean": mean, "std": std, "stats_from": stats_from, "counts": counts}
    write_dataset(folder, images, classes, meta)
    return folder


def summary(meta: dict[str, Any] | ImageDataset) -> list[str]:
    """One line per split from a prepared dataset's meta (or the dataset itself):
    classes, images, images per class, and what its CSV or file named but the copy lacked."""
    meta = getattr(meta, "meta", meta)
    lines = []
    for split, c in meta.get("counts", {}).items():
        per_class = f"{c['min']}" if c["min"] == c["max"] else f"{c['min']}-{c['max']}"
        line = f"{split}: {c['classes']} classes, {c['images']} images, {per_class} per class"
        if c.get("missing"):
            line += f" ({c['missing']} of {c['named']} named images missing, imported with --allow-partial)"
        lines.append(line)
    return lines


def splits(dataset: ImageDataset, name: str | None = None, seed: int | None = None) -> dict[str, list[ImageClass]]:
    """The split is fixed at import (the CSVs or split files): each class's group. `name`
    and `seed` are accepted for the common interface and ignored."""
    return group_splits(dataset)


def import_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The options that decode a prepared copy's source again with the same classes."""
    return {key: meta[key] for key in ("csv_dir", "allow_partial") if key in meta}


# --- the CSV split ----------------------------------------------------------------

def read_csv(path: str | Path) -> list[tuple[str, str]]:
    """[(filename, label), ...] from a `filename,label` CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header != CSV_COLUMNS:
                raise FewshotError(f"{path} has columns {','.join(header) or '(none)'}; expected "
                                   f"{','.join(CSV_COLUMNS)} (the Ravi & Larochelle split files)")
            rows = []
            for number, row in enumerate(reader, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise FewshotError(f"{path} line {number} is {','.join(row)!r}; expected "
                                       f"<filename>,<label> like n0153282900000005.jpg,n01532829")
                filename, label = row[0].strip(), row[1].strip()
                wnid = WNID_PREFIX.match(filename)
                if wnid and WNID.match(label) and wnid.group(0) != label:
                    raise FewshotError(f"{path} line {number}: {filename} is an image of class {wnid.group(0)} "
                                       f"(its name starts with its wnid) but is labelled {label}; correct the "
                                       f"label or the file name")
                rows.append((filename, label))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FewshotError(f"cannot read the split file {path} ({error})") from None
    return rows


def find_csvs(places: Iterable[str | Path | None], allow_partial: bool) -> dict[str, Path]:
    """{split: CSV path} from the first of `places` that holds any split CSV."""
    for place in places:
        if place is None or not Path(place).is_dir():
            continue
        found = {}
        for split in SPLITS:
            names = [f"{split}.csv"] + (["validation.csv"] if split == "val" else [])
            for name in names:
                if (Path(place) / name).is_file():
                    found[split] = Path(place) / name
                    break
        if found:
            missing = [s for s in SPLITS if s not in found]
            if missing and not allow_partial:
                raise FewshotError(f"{place} has {', '.join(p.name for p in found.values())} but no "
                                   f"{', '.join(f'{s}.csv' for s in missing)}; add the missing split files "
                                   f"or pass --allow-partial to import only these splits")
            return found
    return {}


def check_disjoint(split_rows: dict[str, list[tuple[str | None, str]]]) -> None:
    seen = {}
    for split, rows in split_rows.items():
        for _, label in rows:
            if seen.setdefault(label, split) != split:
                raise FewshotError(f"class {label} is in both the {seen[label]} and the {split} split files; "
                                   f"the few-shot splits must not share classes")


# --- JPEG forms ----------------------------------------------------------------

def _read_jpegs(source, size, progress, csv_dir, allow_partial):
    """(form, {split: {class: [JPEG path, ...]}}, partial counts) for the images and tree forms."""
    if csv_dir and not Path(csv_dir).expanduser().is_dir():
        raise FewshotError(f"--csv-dir {csv_dir} is not a folder; give the folder that holds "
                           f"train.csv, val.csv and test.csv")
    if not source.is_dir():
        raise FewshotError(f"{source} is a file, not a miniImageNet copy; {LAYOUT_HINT}")
    flat = _flat_jpegs(source / "images") if (source / "images").is_dir() else {}
    for name, path in _flat_jpegs(source).items():
        flat.setdefault(name, path)
    available = dict(flat)
    for name, path in _tree_jpegs(source).items():
        available.setdefault(name, path)
    if not available:
        raise FewshotError(f"{source} holds no miniImageNet images or split files; {LAYOUT_HINT}")
    places = [csv_dir] if csv_dir else [source] + ([source.parent] if source.name == "images" else [])
    csvs = find_csvs([Path(p).expanduser() for p in places], allow_partial)
    if not csvs:
        where = " or ".join(str(p) for p in places)
        raise FewshotError(f"no split files (train.csv, val.csv, test.csv) in {where}; give the folder that "
                           f"holds them with --csv-dir DIR (the official Ravi & Larochelle CSVs, header "
                           f"filename,label)")
    split_rows = {split: read_csv(path) for split, path in csvs.items()}
    check_disjoint(split_rows)

    named = {f for rows in split_rows.values() for f, _ in rows}
    form = "tree" if any(f in available and f not in flat for f in named) else "images"
    missing = {split: [f for f, _ in rows if f not in available] for split, rows in split_rows.items()}
    total_missing = sum(len(m) for m in missing.values())
    if total_missing and not allow_partial:
        first = [f for split in SPLITS for f in missing.get(split, [])][:SHOW_MISSING]
        per_split = ", ".join(f"{s} {len(missing[s])} of {len(split_rows[s])}" for s in SPLITS if s in missing)
        unnamed = len(set(available) - named)
        extra = f"; {unnamed} images there are named in no split file" if unnamed else ""
        raise FewshotError(f"{total_missing} images named in the split files are missing from {source} "
                           f"({per_split}), first: {', '.join(first)}{extra}; import only the images present with "
                           f"--allow-partial (`fewshot data miniimagenet --from PATH --allow-partial`), "
                           f"or bring the complete set")
    result = {}
    for split in SPLITS:
        for f, label in split_rows.get(split, []):
            if f in available:
                result.setdefault(split, {}).setdefault(label, []).append(available[f])
    partial = {split: {"named": len(rows), "missing": len(missing[split])} for split, rows in split_rows.items()}
    return form, result, partial


def _flat_jpegs(root):
    """{filename: path} for the JPEGs directly in `root`."""
    with os.scandir(root) as entries:
        return {e.name: Path(e.path) for e in entries
                if e.is_file() and os.path.splitext(e.name)[1].lower() in JPEG_SUFFIXES}


def _tree_jpegs(root):
    """{filename: path} for every JPEG under `root` whose folder is named by a wnid; the first
    (in sorted path order) wins when a name appears twice."""
    found = {}
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        if not WNID.match(os.path.basename(parent)):
            continue
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in JPEG_SUFFIXES:
                found.setdefault(name, Path(parent) / name)
    return found


def _decode_into(images, jobs, size, progress):
    """Decode each (row, JPEG path) into images[row] as uint8 3 x size x size, on a few
    threads (Pillow releases the interpreter lock while it decodes)."""
    if not jobs:
        return

    def work(job):
        images[job[0]] = load_image(job[1], size, 3)

    pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))
    try:
        for _ in tqdm(pool.map(work, jobs), total=len(jobs), desc="decoding miniImageNet", unit="img",
                      disable=not progress, leave=False):
            pass
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


# --- array forms ----------------------------------------------------------------

def array_files(source: Path) -> dict[str, Path]:
    """{split: path} of the array form in `source` (a folder, or one of its files)."""
    where = source if source.is_dir() else source.parent
    if not source.is_dir() and not ARRAY_FILE.match(source.name):
        return {}
    found = {}
    for path in sorted(where.iterdir()):
        match = ARRAY_FILE.match(path.name)
        if match and path.is_file():
            split = SPLIT_ALIASES[match.group(1).lower()]
            if split in found:
                raise FewshotError(f"{where} has two files for the {split} split, {found[split].name} and "
                                   f"{path.name}; keep one")
            found[split] = path
    return found


def _load_file(path):
    if path.suffix.lower() == ".npz":
        with failure(path, "the miniImageNet array file", "it is not one, or it is damaged"):
            try:
                with np.load(path, allow_pickle=False) as data:
                    return {key: data[key] for key in data.files}
            except zipfile.BadZipFile as error:
                raise ValueError(str(error)) from None
    data = load_pickle(path, "a miniImageNet array file")
    if not isinstance(data, dict):
        raise FewshotError(f"{path} holds a {type(data).__name__}, not a dict; expected image_data and "
                           f"class_dict (learn2learn) or images and labels")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}


def _first(data, keys):
    return next((k for k in keys if k in data), None)


def read_arrays(files: dict[str, Path], size: int, progress: bool,
                allow_partial: bool) -> tuple[dict[str, dict[str, list[np.ndarray]]], dict[str, dict[str, int]]]:
    """({split: {class: [image, ...]}}, partial counts) from the array files."""
    missing = [s for s in SPLITS if s not in files]
    if missing and not allow_partial:
        raise FewshotError(f"{next(iter(files.values())).parent} has no file for the "
                           f"{', '.join(missing)} split{'s' if len(missing) > 1 else ''} (found "
                           f"{', '.join(p.name for p in files.values())}); add it, or pass --allow-partial "
                           f"to import only these splits")
    result = {}
    for split, path in tqdm(files.items(), desc="reading miniImageNet arrays", unit="file",
                            disable=not progress, leave=False):
        data = _load_file(path)
        with failure(path, "the miniImageNet array file", "it is damaged or in another format; expected "
                     "image_data and class_dict (learn2learn), or images and labels"):
            result[split] = _split_images(data, path, split, size)
    check_disjoint({s: [(None, name) for name in classes] for s, classes in result.items()})
    return result, {}


def _split_images(data, path, split, size):
    """{class: [3 x size x size image, ...]} of one array file's contents."""
    image_key = _first(data, IMAGE_KEYS)
    if image_key is None:
        raise FewshotError(f"{path} has keys {listed(map(str, data))}; expected the images under one of "
                           f"{', '.join(IMAGE_KEYS)}")
    images = _nchw(array(data[image_key], path, f"the {image_key} of"), path)
    if "class_dict" in data:
        if not isinstance(data["class_dict"], dict):
            raise FewshotError(f"{path}: class_dict is a {type(data['class_dict']).__name__}, not a mapping of "
                               f"class names to image rows; the file is damaged or in another format")
        by_class = {_text(k): array(v, path, f"class {brief(k)} in", np.int64).ravel()
                    for k, v in data["class_dict"].items()}
    else:
        by_class = _classes_from_labels(data, len(images), path, split)
    classes = {}
    for name, rows in by_class.items():
        if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
            raise FewshotError(f"{path}: class {brief(name)} lists image {int(rows.max())}, but the file holds "
                               f"{len(images)} images")
        if len(rows):
            classes[name] = rows
    return {name: _resized(images, rows, size) for name, rows in classes.items()}


def _text(value):
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, np.generic):
        value = value.item()
        return value.decode("latin1") if isinstance(value, bytes) else str(value)
    return str(value)


def _nchw(images, path):
    if images.dtype != np.uint8:
        raise FewshotError(f"{path} holds {images.dtype} images; expected uint8 pixels 0-255")
    if images.ndim == 4 and images.shape[-1] == 3:
        return images  # N x H x W x 3, transposed per image below
    if images.ndim == 4 and images.shape[1] == 3:
        return images.transpose(0, 2, 3, 1)
    raise FewshotError(f"{path} holds images of shape {tuple(images.shape)}; expected N x H x W x 3 "
                       f"(or N x 3 x H x W) colour images")


def _classes_from_labels(data, n, path, split):
    label_key = _first(data, LABEL_KEYS)
    if label_key is None:
        raise FewshotError(f"{path} has keys {listed(map(str, data))}; expected class_dict, or a label "
                           f"per image under one of {', '.join(LABEL_KEYS)}")
    labels = array(data[label_key], path, f"the {label_key} of").ravel()
    if len(labels) != n:
        raise FewshotError(f"{path} has {n} images but {len(labels)} {label_key}; expected one label per image")
    names_key = _first(data, NAME_KEYS)
    names = [_text(v) for v in array(data[names_key], path, f"the {names_key} of").ravel()] if names_key else None
    by_class = {}
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        if np.issubdtype(labels.dtype, np.integer):
            if names is not None:
                if not 0 <= int(value) < len(names):
                    raise FewshotError(f"{path}: label {int(value)} has no entry in {names_key} "
                                       f"({len(names)} names)")
                name = names[int(value)]
            else:
                name = f"{split}-class{int(value)}"
        else:
            name = _text(value)
        by_class[name] = rows
    return by_class


def _resized(images, rows, size):
    """The rows of an N x H x W x 3 array as 3 x size x size images (LANCZOS when the size differs)."""
    out = []
    for row in rows:
        image = images[row]
        if image.shape[:2] != (size, size):
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.LANCZOS))
        out.append(image.transpose(2, 0, 1))
    return out


# --- statistics ----------------------------------------------------------------

def channel_stats(images: np.ndarray, row_ranges: Iterable[tuple[int, int]]) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std in [0, 1] units over the given rows, exact
    (from 256-bin histograms, so the array is never held as floats)."""
    counts = np.zeros((images.shape[1], 256), np.int64)
    for start, count in row_ranges:
        for first in range(start, start + count, 1024):
            chunk = images[first:min(first + 1024, start + count)]
            for c in range(images.shape[1]):
                counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(1)
    if not total.all():
        return [0.0] * images.shape[1], [1.0] * images.shape[1]
    mean = (counts * values).sum(1) / total
    var = (counts * (values[None] - mean[:, None]) ** 2).sum(1) / total
    return [float(m) for m in mean], [float(s) for s in np.sqrt(var)]


MINIIMAGENET = DATASETS.register("miniimagenet")(DatasetKind(
    "miniimagenet", prepare=import_miniimagenet, splits=splits, default_size=IMAGE_SIZE,
    import_options=import_options, reads=STORED_IMAGE_READS))
