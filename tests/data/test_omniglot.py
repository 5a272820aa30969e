"""Omniglot readers, import cache, splits and input errors, on the real data where present
(../shared/data relative to the repository) and on tiny official-layout copies built here."""
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot import cli
from fewshot.config import Config
import fewshot.data
from fewshot.data import images, load, omniglot, resolve
from fewshot.errors import FewshotError

from conftest import SHARED_DATA, skip_without
from helpers import tagged_dataset

SPRITES = SHARED_DATA / "omniglot-28"
SMALL_ZIP = SHARED_DATA / "omniglot-official-sample" / "images_background_small1.zip"
SMALL_ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test writes to the user's cache, whatever tests/conftest.py does."""
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / "fewshot-home"))
    return tmp_path / "fewshot-home"


@pytest.fixture(scope="module")
def sprites_dir():
    skip_without(SPRITES / "index.csv", "the real Omniglot 28x28 sprites")
    return SPRITES


@pytest.fixture(scope="module")
def small_zip():
    skip_without(SMALL_ZIP, "the official sample zip")
    return SMALL_ZIP


@pytest.fixture(scope="module")
def sprite_chars(sprites_dir):
    return omniglot.read_sprites(sprites_dir, 28)


@pytest.fixture(scope="module")
def small_chars(small_zip):
    return omniglot.read_official(small_zip, 28, progress=False)


@pytest.fixture(scope="module")
def sprite_cache(sprites_dir, tmp_path_factory):
    """The full 28x28 sprite set imported once for this module."""
    folder = tmp_path_factory.mktemp("omniglot-28-cache")
    omniglot.import_omniglot(sprites_dir, folder, size=28, progress=False)
    return folder


# -- official layout (small zip) against the sprite form --------------------------------------

def test_small_zip_char_ids_and_names_exist_in_sprite_index(small_chars, sprite_chars):
    assert len(small_chars) == 136
    assert sum(len(c[3]) for c in small_chars.values()) == 2720
    assert sorted({c[1] for c in small_chars.values()}) == SMALL_ALPHABETS
    for char_id, (group, alphabet, character, drawers) in small_chars.items():
        assert char_id in sprite_chars, char_id
        assert sprite_chars[char_id][:3] == ("background", alphabet, character), char_id
        assert group == "background"
        assert sorted(drawers) == list(range(1, 21)), char_id
    # the small subset holds these five alphabets whole
    for alphabet in SMALL_ALPHABETS:
        official = {i for i, c in small_chars.items() if c[1] == alphabet}
        sprites = {i for i, c in sprite_chars.items() if c[1] == alphabet}
        assert official == sprites, alphabet


def _stack(chars, ids):
    """(len(ids), 20, 784) float array, drawers in order 1..20."""
    return np.stack([np.stack([chars[i][3][d] for d in sorted(chars[i][3])]) for i in ids]
                    ).reshape(len(ids), 20, -1).astype(np.float32)


def test_each_official_character_is_closest_to_its_own_sprite_tiles(small_chars, sprite_chars):
    by_alphabet = defaultdict(list)
    for char_id, entry in small_chars.items():
        by_alphabet[entry[1]].append(char_id)
    checked = 0
    for alphabet, ids in by_alphabet.items():
        ids = sorted(ids)
        official, sprites = _stack(small_chars, ids), _stack(sprite_chars, ids)
        # distance[i, j]: mean over the 20 drawers of the L2 distance between official
        # character i and sprite character j, drawer by drawer
        distance = np.sqrt(((official[:, None] - sprites[None]) ** 2).sum(-1)).mean(-1)
        own = np.diag(distance)
        others = distance + np.diag(np.full(len(ids), np.inf))
        assert (own < others.min(axis=1)).all(), (alphabet, [ids[i] for i in np.flatnonzero(
            own >= others.min(axis=1))])
        checked += len(ids)
    assert checked == 136


def test_official_28_equals_sprite_tiles_pixel_for_pixel(small_chars, sprite_chars):
    """The tiles were made with convert('L').resize((28, 28), LANCZOS), as the official
    reader does, so every one of the 2,720 images is identical, not just close."""
    for char_id, (_, _, _, drawers) in small_chars.items():
        tiles = sprite_chars[char_id][3]
        for drawer, image in drawers.items():
            assert image.dtype == np.uint8 and image.shape == (28, 28)
            assert np.array_equal(image, tiles[drawer]), (char_id, drawer)


# -- tiny official layout built here -------------------------------------------------------------

def _strokes(rng):
    """A 105x105 boolean image (True = white), a few black boxes as 'ink'."""
    image = np.ones((105, 105), dtype=bool)
    for _ in range(3):
        y, x = rng.integers(5, 80, size=2)
        h, w = rng.integers(3, 20, size=2)
        image[y:y + h, x:x + w] = False
    return image


def write_official_layout(root, set_name="background", alphabets=(("Alpha", 2), ("Beta", 1)),
                          first_id=1, drawers=3, seed=0):
    """Write images_<set>/<Alphabet>/characterNN/<id>_<drawer>.png (105x105, mode '1') under
    `root`; return {char_id: (alphabet, character, {drawer: bool image})}."""
    rng = np.random.default_rng(seed)
    written, char_id = {}, first_id
    for alphabet, count in alphabets:
        for n in range(1, count + 1):
            character = f"character{n:02d}"
            folder = Path(root) / f"images_{set_name}" / alphabet / character
            folder.mkdir(parents=True)
            pixels = {}
            for drawer in range(1, drawers + 1):
                pixels[drawer] = _strokes(rng)
                image = Image.fromarray(pixels[drawer])
                assert image.mode == "1" and image.size == (105, 105)
                image.save(folder / f"{char_id:04d}_{drawer:02d}.png")
            written[char_id] = (alphabet, character, pixels)
            char_id += 1
    return written


def zip_layout(root, set_name, dest):
    """Zip root/images_<set>/... into `dest` with the official in-zip paths."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted((Path(root) / f"images_{set_name}").rglob("*")):
            z.write(path, path.relative_to(root).as_posix())
    return dest


def expected_28(pixels):
    return np.asarray(Image.fromarray(pixels).convert("L").resize((28, 28), Image.LANCZOS))


def test_unzipped_folder_and_zip_give_the_same_array(tmp_path):
    raw = tmp_path / "raw"
    written = write_official_layout(raw)
    written.update(write_official_layout(raw, "evaluation", (("Gamma", 2),), first_id=4, seed=1))
    zips = tmp_path / "zips"
    zips.mkdir()
    for set_name in ("background", "evaluation"):
        zip_layout(raw, set_name, zips / f"images_{set_name}.zip")

    from_folder = omniglot.import_omniglot(raw, tmp_path / "from-folder", progress=False)
    from_zips = omniglot.import_omniglot(zips, tmp_path / "from-zips", progress=False)
    a, b = images.read_dataset(from_folder, 28), images.read_dataset(from_zips, 28)
    assert a.images.shape == (5 * 3, 1, 28, 28)
    assert np.array_equal(a.images, b.images)
    assert [vars(c) for c in a.classes] == [vars(c) for c in b.classes]
    assert [c.name for c in a.classes] == ["Alpha/character01", "Alpha/character02", "Beta/character01",
                                           "Gamma/character01", "Gamma/character02"]
    assert [c.group for c in a.classes] == ["background"] * 3 + ["evaluation"] * 2
    for cls in a.classes:
        _, _, pixels = written[cls.info["char_id"]]
        for k, drawer in enumerate(sorted(pixels)):
            assert np.array_equal(a.images[cls.start + k, 0], expected_28(pixels[drawer]))

    # a single zip given directly reads as its part of the folder of zips
    single = omniglot.read_official(zips / "images_background.zip", 28, progress=False)
    assert sorted(single) == [1, 2, 3]
    # at full size nothing is resampled: 0 = ink, 255 = background, exactly the PNG's pixels
    full = omniglot.read_official(raw, 105, progress=False)
    assert np.array_equal(full[1][3][2], np.where(written[1][2][2], 255, 0).astype(np.uint8))


# -- the import cache ---------------------------------------------------------------------------

def test_import_writes_a_complete_cache(sprite_cache):
    """How fast it loads is measured by benchmarks/load_time.py, not asserted here."""
    assert images.is_prepared(sprite_cache, 28)
    dataset = images.read_dataset(sprite_cache, 28)
    array = np.ascontiguousarray(dataset.images)  # what load() does for small sets

    assert array.shape == (32460, 1, 28, 28) and array.dtype == np.uint8
    assert len(dataset.classes) == 1623
    assert [c.info["char_id"] for c in dataset.classes] == list(range(1, 1624))
    position = 0
    for cls in dataset.classes:
        assert cls.start == position and cls.count == 20
        position += cls.count
    assert position == len(array)
    assert Counter(c.group for c in dataset.classes) == {"background": 964, "evaluation": 659}
    assert dataset.meta["invert"] is True and dataset.meta["sizes"] == [28]
    assert dataset.classes[0].name == "Arcadian/character01"
    assert dataset.classes[-1].name == "ULOG/character26"


def test_import_matches_the_sprite_sheets(sprite_cache, sprite_chars):
    dataset = images.read_dataset(sprite_cache, 28)
    for cls in dataset.classes[::97]:
        tiles = sprite_chars[cls.info["char_id"]][3]
        for k in range(cls.count):
            assert np.array_equal(dataset.images[cls.start + k, 0], tiles[k + 1])


def test_a_raw_copy_is_imported_once_into_fewshot_home(sprites_dir, _isolated_home, monkeypatch):
    config = Config(data=str(sprites_dir))
    first = resolve(config, progress=False)
    assert first.parent == _isolated_home / "cache" and images.is_prepared(first, 28)

    def no_second_import(*args, **kwargs):
        raise AssertionError("the cache was not reused")
    monkeypatch.setattr(fewshot.data.kind("omniglot"), "prepare", no_second_import)
    dataset, refs = load(config, progress=False)  # timed by benchmarks/load_time.py
    assert dataset.root == first and len(dataset.images) == 32460
    assert len(refs["val"]) == 100 and len(refs["test"]) == 423


# -- splits -------------------------------------------------------------------------------------

def _chars(refs, dataset):
    by_start = {c.start: i for i, c in enumerate(dataset.classes)}
    return [by_start[r.start] for r in refs]


def test_maml_split(sprite_cache):
    dataset = images.read_dataset(sprite_cache, 28)
    refs = omniglot.splits(dataset, "maml")
    assert len(refs["train"]) == 1100 * 4 and len(refs["val"]) == 100 and len(refs["test"]) == 423
    train = _chars(refs["train"], dataset)
    rotations = defaultdict(list)
    for char, ref in zip(train, refs["train"]):
        rotations[char].append(ref.rotation)
        assert ref.count == 20
    assert len(rotations) == 1100 and all(sorted(r) == [0, 1, 2, 3] for r in rotations.values())
    assert all(r.rotation == 0 for part in ("val", "test") for r in refs[part])
    val, test = set(_chars(refs["val"], dataset)), set(_chars(refs["test"], dataset))
    assert len(val) == 100 and len(test) == 423
    assert not (set(train) & val) and not (set(train) & test) and not (val & test)
    assert set(train) | val | test == set(range(1623))
    assert omniglot.splits(dataset, "maml") == refs  # deterministic
    assert omniglot.splits(dataset, "maml", seed=2)["test"] != refs["test"]


def test_lake_split(sprite_cache):
    """Validation holds out whole background alphabets (4 of the 30, each with 20 characters
    or more, so that Lake's 20-way runs fit); meta-test is images_evaluation."""
    dataset = images.read_dataset(sprite_cache, 28)
    refs = omniglot.splits(dataset, "lake")
    groups = [c.group for c in dataset.classes]
    train, val, test = (set(_chars(refs[p], dataset)) for p in ("train", "val", "test"))
    assert len(refs["train"]) == len(train) * 4
    assert Counter(r.rotation for r in refs["train"]) == {r: len(train) for r in (0, 1, 2, 3)}
    assert train | val == {i for i, g in enumerate(groups) if g == "background"}
    assert not (train & val)
    alphabet = {i: c.name.split("/")[0] for i, c in enumerate(dataset.classes)}
    held = {alphabet[i] for i in val}
    assert held == set(omniglot.lake_validation_alphabets(dataset)) and len(held) == 4
    assert not held & {alphabet[i] for i in train}  # whole alphabets
    assert all(sum(alphabet[i] == a for i in val) >= 20 for a in held)
    assert len(train) == 964 - len(val)
    assert test == {i for i, g in enumerate(groups) if g == "evaluation"} and len(test) == 659
    assert len(refs["test"]) == 659 and all(r.rotation == 0 for r in refs["test"] + refs["val"])
    assert omniglot.splits(dataset, "lake") == refs
    assert omniglot.lake_validation_alphabets(dataset, seed=2) != sorted(held)


def test_lake_validation_tasks_are_lakes_runs(sprite_cache):
    """20 characters of one held-out alphabet, every training image by one drawer and every
    test image by another, each test image classified on its own; fixed by the seed."""
    dataset = images.read_dataset(sprite_cache, 28)
    refs = omniglot.splits(dataset, "lake")
    config = Config(split="lake", ways=20, shots=1, query=1, eval_ways=20, eval_query=1)
    sampler = fewshot.data.sampler(config, dataset, refs, "val", seed=5, ways=20, query=1)
    assert sampler.alone
    alphabets = Counter()
    for index in range(30):
        plan = sampler.plan(np.random.default_rng([5, index, 0]))
        classes = [next(c for c in refs["val"] if c.start <= row[0] < c.start + c.count) for row in plan.rows]
        assert len({c.name for c in classes}) == 20
        assert len({c.name.split("/")[0] for c in classes}) == 1
        drawers = plan.rows - np.array([c.start for c in classes])[:, None]  # 20 x (support, query)
        assert len(set(drawers[:, 0])) == 1 and len(set(drawers[:, 1])) == 1 and drawers[0, 0] != drawers[0, 1]
        alphabets[classes[0].name.split("/")[0]] += 1
    assert set(alphabets) <= set(omniglot.lake_validation_alphabets(dataset)) and len(alphabets) > 1
    again = fewshot.data.sampler(config, dataset, refs, "val", seed=5, ways=20, query=1)
    assert np.array_equal(again.plan(np.random.default_rng([5, 3, 0])).rows,
                          sampler.plan(np.random.default_rng([5, 3, 0])).rows)
    # meta-training and the maml split draw as before: across alphabets, batched together
    train = fewshot.data.sampler(config, dataset, refs, "train", seed=5)
    assert not train.alone and train.members is None and not train.same_drawers


def test_training_tasks_within_one_alphabet_on_request(sprite_cache):
    dataset = images.read_dataset(sprite_cache, 28)
    refs = omniglot.splits(dataset, "lake")
    config = Config(split="lake", ways=20, shots=1, query=5, episodes_within_alphabet=True)
    sampler = fewshot.data.sampler(config, dataset, refs, "train", seed=0)
    seen = set()
    for index in range(20):
        plan = sampler.plan(np.random.default_rng([0, index, 0]))
        classes = [next(c for c in refs["train"] if c.start <= row[0] < c.start + c.count and
                        c.rotation == turns) for row, turns in zip(plan.rows, plan.rotations)]
        assert len({omniglot.alphabet(c) for c in classes}) == 1  # one alphabet, turned as one
        assert len({(c.name) for c in classes}) == 20
        seen.add(omniglot.alphabet(classes[0]))
    assert len({turns for _, turns in seen}) > 1  # turned alphabets are alphabets of their own
    with pytest.raises(FewshotError, match="within one alphabet need an alphabet of 60 characters"):
        fewshot.data.sampler(config.replace(ways=60), dataset, refs, "train", seed=0)


def test_only_meta_training_tasks_are_distorted_when_asked(sprite_cache):
    import torch
    dataset = images.read_dataset(sprite_cache, 28)
    refs = omniglot.splits(dataset, "lake")
    config = Config(split="lake", ways=20, shots=1, query=5, eval_ways=20, eval_query=1, affine_distortion=True)
    assert fewshot.data.sampler(config, dataset, refs, "train", seed=0).distort
    plain = fewshot.data.sampler(config.replace(affine_distortion=False), dataset, refs, "train", seed=0)
    distorted = fewshot.data.sampler(config, dataset, refs, "train", seed=0).batch(0, 1)[0]
    assert not plain.distort and not torch.equal(plain.batch(0, 1)[0].support_x, distorted.support_x)
    for split in ("val", "test"):  # validation runs and test tasks: the images as they are
        assert not fewshot.data.sampler(config, dataset, refs, split, seed=0, ways=20, query=1).distort
    # an evaluation on meta-train classes (eval --classes train) sees them undistorted too
    assert not fewshot.data.sampler(config, dataset, refs, "train", seed=0, ways=5, query=1).distort


def test_unknown_split_is_an_error(tmp_path):
    folder = tagged_dataset(tmp_path / "small", classes=12, size=28)
    with pytest.raises(FewshotError, match="maml or lake"):
        omniglot.splits(images.read_dataset(folder, 28), "vinyals")


# -- bad input ----------------------------------------------------------------------------------

def _missing(tmp_path):
    return tmp_path / "no-such-folder"


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _corrupt_zip(tmp_path):
    path = tmp_path / "images_background.zip"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _folder_with_corrupt_zip(tmp_path):
    _corrupt_zip(tmp_path)
    return tmp_path


def _bad_png(tmp_path):
    raw = tmp_path / "raw"
    write_official_layout(raw, alphabets=(("Alpha", 1),), drawers=2)
    bad = raw / "images_background" / "Alpha" / "character01" / "0001_02.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a png")
    return raw, bad


def _truncated_png(tmp_path):
    raw = tmp_path / "raw"
    write_official_layout(raw, alphabets=(("Alpha", 1),), drawers=2)
    bad = raw / "images_background" / "Alpha" / "character01" / "0001_01.png"
    bad.write_bytes(bad.read_bytes()[:70])
    return raw, bad


BAD_INPUTS = {
    "missing path": lambda tmp: (_missing(tmp), _missing(tmp)),
    "empty folder": lambda tmp: (_empty(tmp), tmp / "empty"),
    "corrupt zip": lambda tmp: (_corrupt_zip(tmp), tmp / "images_background.zip"),
    "folder with a corrupt zip": lambda tmp: (_folder_with_corrupt_zip(tmp), tmp / "images_background.zip"),
    "png that does not decode": _bad_png,
    "truncated png": _truncated_png,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_an_error_naming_the_path(case, tmp_path):
    source, named = BAD_INPUTS[case](tmp_path)
    with pytest.raises(FewshotError) as info:
        omniglot.import_omniglot(source, tmp_path / "out", progress=False)
    assert str(named) in str(info.value)
    assert "\n" not in str(info.value)
    assert not images.is_prepared(tmp_path / "out")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_via_cli_is_one_line_and_exit_2(case, tmp_path, capsys):
    source, named = BAD_INPUTS[case](tmp_path)
    root = tmp_path / "root"
    code = cli.main(["data", "omniglot", "--from", str(source), "--root", str(root), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fewshot: error: "), err
    assert str(named) in lines[0] and "Traceback" not in err
    assert out == ""
    assert not images.is_prepared(root / "omniglot")


def test_bad_png_inside_a_zip_names_the_zip_and_the_entry(tmp_path):
    raw, bad = _bad_png(tmp_path)
    archive = zip_layout(raw, "background", tmp_path / "images_background.zip")
    with pytest.raises(FewshotError) as info:
        omniglot.import_omniglot(archive, tmp_path / "out", progress=False)
    message = str(info.value)
    assert "images_background.zip" in message
    assert "images_background/Alpha/character01/0001_02.png" in message


def test_cli_needs_exactly_one_source(tmp_path, capsys):
    assert cli.main(["data", "omniglot", "--root", str(tmp_path)]) == 2
    assert cli.main(["data", "omniglot", "--download", "--from", str(tmp_path), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("fewshot: error: give exactly one") for line in err)


def test_sprite_form_errors(tmp_path):
    broken = tmp_path / "sprites"
    broken.mkdir()
    (broken / "index.csv").write_text("set,alphabet,character,char_id,row,drawers\n"
                                      "background,Arcadian,character01,1,0,20\n")
    with pytest.raises(FewshotError, match="28x28 only"):
        omniglot.read_any(broken, 32)
    with pytest.raises(FewshotError) as info:
        omniglot.read_any(broken, 28)
    assert str(broken) in str(info.value) and "malformed" in str(info.value)
