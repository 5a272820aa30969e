"""Omniglot (Lake et al. 2015): readers for the official layout and the 28x28
sprite form, the official download, and the two standard class splits."""
from __future__ import annotations

import csv
import re
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import FewshotError
from ..reading import convert_image, decode_image, failure
from .download import download
from .folder import load_image
from .images import ImageClass, write_dataset
from .kinds import DATASETS, STORED_IMAGE_READS, DatasetKind, EpisodeRule, plain_episodes

if TYPE_CHECKING:
    from ..config import Config
    from .images import ImageDataset

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
# md5 of the official release files (the checksums torchvision checks as well).
OFFICIAL_ZIPS = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
# <set>/<Alphabet>/characterNN/<id>_<drawer>.png, where <set> is images_background,
# images_evaluation or one of the official small subsets (images_background_small1, ...).
PNG_PATH = re.compile(r"(?:^|/)images_(background|evaluation)\w*/([^/]+)/(character\d+)/(\d+)_(\d+)\.png$")
LAYOUT_HINT = ("expected images_background/<Alphabet>/characterNN/<id>_<drawer>.png (or the official "
               ".zip files), or the 28x28 sprite form with index.csv")


def _iter_official_pngs(path):
    """Yield (match, open-bytes callable, where) for every Omniglot PNG under `path`
    (a folder, a zip, or a folder of zips)."""
    path = Path(path)
    zips = [path] if path.is_file() else sorted(path.glob("images_*.zip"))
    for archive in zips:
        try:
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if match := PNG_PATH.search(name):
                        yield match, z.read(name), f"{archive}:{name}"
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
            raise FewshotError(f"{archive} is not a readable zip ({error}); download it again "
                               f"or unzip it yourself and pass the folder") from None
    if path.is_dir():
        for png in sorted(path.glob("images_*/*/character*/*.png")):
            if match := PNG_PATH.search(png.as_posix()):
                yield match, png.read_bytes(), str(png)


def read_official(path: str | Path, size: int,
                  progress: bool = True) -> dict[int, tuple[str, str, str, dict[int, np.ndarray]]]:
    """Decode the official layout into {char_id: (group, alphabet, character, {drawer: image})}.
    Images are resized as the reference code and the sprite form do: convert('L'), LANCZOS."""
    characters = {}
    for match, data, where in tqdm(_iter_official_pngs(path), desc="reading Omniglot", unit="img",
                                   disable=not progress, leave=False):
        group, alphabet, character, char_id, drawer = match.groups()
        entry = characters.setdefault(int(char_id), (group, alphabet, character, {}))
        entry[3][int(drawer)] = decode_png(data, size, where)
    return characters


def decode_png(data: bytes, size: int, where: str) -> np.ndarray:
    """One Omniglot PNG's bytes -> uint8 size x size (0 = ink, 255 = background, as in the
    files): convert('L'), then LANCZOS to `size`, as the reference code and the sprite form
    do. Every Omniglot image goes through this, at import and in `fewshot eval --lake`."""
    return load_image(data, size, 1, where)[0]  # the one conversion of an image at any size


def read_sprites(path: str | Path, size: int) -> dict[int, tuple[str, str, str, dict[int, np.ndarray]]]:
    """Read the sprite form: one sheet per alphabet, a row per character, a column per drawer."""
    path = Path(path)
    if size != 28:
        raise FewshotError(f"the sprite form in {path} is 28x28 only; for image_size {size} "
                           f"import the official zips instead")
    characters, sheets = {}, {}
    with failure(path / "index.csv", "the sprite form's index", LAYOUT_HINT):
        with open(path / "index.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    for number, row in enumerate(rows, 2):
        with failure(path / "index.csv", f"line {number} of", f"each line is set,alphabet,character,char_id,row,"
                     f"drawers; {LAYOUT_HINT}"):
            key = (row["set"], row["alphabet"])
            r, drawers, char_id = int(row["row"]), int(row["drawers"]), int(row["char_id"])
            if r < 0 or drawers < 1:
                raise ValueError(f"row {r} with {drawers} drawers")
        if key not in sheets:
            sheet = path / f"images_{key[0]}" / f"{key[1]}.png"
            if not sheet.is_file():
                raise FewshotError(f"the sprite form in {path} is malformed (line {number} of index.csv names "
                                   f"{sheet.relative_to(path)}, which is missing); {LAYOUT_HINT}")
            sheets[key] = _sheet(sheet)
        sheet = sheets[key]
        if 28 * (r + 1) > sheet.shape[0] or 28 * drawers > sheet.shape[1]:
            raise FewshotError(f"the sprite form in {path} is malformed (sheet {key[1]}.png is {sheet.shape[1]}x"
                               f"{sheet.shape[0]} pixels, too small for row {r} of {drawers} drawers, line {number}"
                               f" of index.csv); {LAYOUT_HINT}")
        tiles = sheet[28 * r:28 * (r + 1), :28 * drawers].reshape(28, drawers, 28).transpose(1, 0, 2)
        characters[char_id] = (row["set"], row["alphabet"], row["character"],
                               {d + 1: tiles[d] for d in range(drawers)})
    return characters


def _sheet(path):
    """One sprite sheet as a gray array: 28-pixel tiles, a row per character."""
    sheet = np.asarray(convert_image(decode_image(path, path), "L", path))
    if sheet.shape[0] % 28 or sheet.shape[1] % 28:
        raise FewshotError(f"sprite sheet {path} is {sheet.shape[1]}x{sheet.shape[0]} pixels, not a whole number "
                           f"of 28x28 tiles; {LAYOUT_HINT}")
    return sheet


def is_sprite_form(path: str | Path) -> bool:
    return Path(path, "index.csv").is_file()


def read_any(path: str | Path, size: int,
             progress: bool = True) -> dict[int, tuple[str, str, str, dict[int, np.ndarray]]]:
    path = Path(path)
    if not path.exists():
        raise FewshotError(f"{path} does not exist; {LAYOUT_HINT}")
    characters = read_sprites(path, size) if is_sprite_form(path) else read_official(path, size, progress)
    if not characters:
        raise FewshotError(f"{path} holds no Omniglot images; {LAYOUT_HINT}")
    return characters


IMAGE_SIZE = 28  # the reference code's and the sprite form's side


def import_omniglot(source: str | Path, folder: Path, size: int = IMAGE_SIZE, progress: bool = True) -> Path:
    """Decode `source` once into the cached array in `folder`."""
    characters = read_any(source, size, progress)
    images, classes, start = [], [], 0
    for char_id in sorted(characters):
        group, alphabet, character, drawers = characters[char_id]
        images.extend(drawers[d] for d in sorted(drawers))
        classes.append(ImageClass(f"{alphabet}/{character}", group, start, len(drawers), {"char_id": char_id}))
        start += len(drawers)
    array = np.stack(images)[:, None]  # N x 1 x H x W; 0 = ink, 255 = background, as in the files
    meta = {"dataset": "omniglot", "source": str(Path(source).resolve()), "invert": True, "channels": 1}
    write_dataset(folder, array, classes, meta)
    return folder


def download_official(root: str | Path, base_url: str = OFFICIAL_URL, progress: bool = True) -> Path:
    """Fetch the two official zips into `root/raw` and return that folder."""
    raw = Path(root) / "raw"
    for name, md5 in OFFICIAL_ZIPS.items():
        download(f"{base_url}/{name}", raw / name, md5=md5, progress=progress,
                 hint="If you have a copy, import it with `fewshot data omniglot --from PATH`.")
    return raw


# The MAML paper's split (cbfinn/maml data_generator.py): all characters shuffled
# with a fixed seed, 1200 for meta-training of which the last 100 validate, the
# remaining 423 for meta-test. Fractions keep the rule for smaller copies.
MAML_TRAIN, MAML_VAL, MAML_TOTAL = 1100, 100, 1623
ROTATIONS = (0, 1, 2, 3)  # multiples of 90 degrees; each a new training class
# The lake split validates on whole background alphabets, held out of meta-training: 4 of
# the 30 (a fraction, for smaller copies), drawn with the split's seed among those with
# LAKE_WAYS characters or more, so that Lake's 20-way runs fit in each.
LAKE_VAL_ALPHABETS, BACKGROUND_ALPHABETS, LAKE_WAYS = 4, 30, 20
# Lake et al.'s runs (Science 2015; Koch et al. 2015 describe the drawing): the N characters
# of a task from one alphabet, every training image by one drawer and every test image by
# another, each test image classified on its own
LAKE_RUNS = EpisodeRule(within_alphabet=True, same_drawers=True, alone=True)


def alphabet(image_class: ImageClass) -> tuple[str, int]:
    """The alphabet of a split's class; a character turned by quarter turns belongs to its
    alphabet turned as much (a new alphabet, as the turned character is a new character)."""
    return image_class.name.split("/")[0], image_class.rotation


def lake_validation_alphabets(dataset: ImageDataset, seed: int = 1) -> list[str]:
    """The background alphabets the lake split holds out for validation, sorted."""
    members = {}
    for c in dataset.classes:
        if c.group == "background":
            members.setdefault(alphabet(c)[0], []).append(c)
    names = sorted(members)
    if len(names) < 2:
        raise FewshotError(f"split lake holds out whole background alphabets for validation, but "
                           f"{dataset.root} has {len(names)} background alphabet(s); use --set split=maml")
    candidates = [a for a in names if len(members[a]) >= LAKE_WAYS] or names
    n_val = min(max(1, round(len(names) * LAKE_VAL_ALPHABETS / BACKGROUND_ALPHABETS)), len(names) - 1,
                len(candidates))
    order = np.random.default_rng(seed).permutation(len(candidates))
    return sorted(candidates[i] for i in order[:n_val])


def splits(dataset: ImageDataset, name: str, seed: int = 1) -> dict[str, list[ImageClass]]:
    """{split: [ImageClass]} for train / val / test; each training character also appears
    turned by 90, 180 and 270 degrees, as three more classes."""
    n = len(dataset.classes)
    if name == "maml":
        order = np.random.default_rng(seed).permutation(n)
        n_train = round(n * MAML_TRAIN / MAML_TOTAL)
        n_val = max(1, round(n * MAML_VAL / MAML_TOTAL))
        parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
                 "test": order[n_train + n_val:]}
    elif name == "lake":
        held = set(lake_validation_alphabets(dataset, seed))
        background = [i for i, c in enumerate(dataset.classes) if c.group == "background"]
        parts = {"train": [i for i in background if alphabet(dataset.classes[i])[0] not in held],
                 "val": [i for i in background if alphabet(dataset.classes[i])[0] in held],
                 "test": [i for i, c in enumerate(dataset.classes) if c.group == "evaluation"]}
    else:
        raise FewshotError(f"unknown Omniglot split {name!r}; choose maml or lake")
    refs = {}
    for part, indices in parts.items():
        rotations = ROTATIONS if part == "train" else (0,)
        refs[part] = [replace(dataset.classes[i], rotation=r,
                              name=dataset.classes[i].name + (f" rotated {90 * r}" if r else ""))
                      for i in sorted(indices) for r in rotations]
    return refs


def episodes(config: Config, split: str) -> EpisodeRule:
    """Validation under the lake split: Lake's runs. Meta-training: within one alphabet
    where `episodes_within_alphabet` asks for it."""
    if config.split == "lake" and split == "val":
        return LAKE_RUNS
    rule = plain_episodes(config, split)
    return replace(rule, within_alphabet=split == "train" and config.episodes_within_alphabet)


OMNIGLOT = DATASETS.register("omniglot")(DatasetKind(
    "omniglot", prepare=import_omniglot, splits=splits, default_size=IMAGE_SIZE, alphabet=alphabet,
    episodes=episodes, reads=STORED_IMAGE_READS | {"episodes_within_alphabet"}))
