"""`fewshot data folder`: a user's own tree of class folders, written here image by
image (odd sizes, gray, colour, palette, alpha, several formats), imported into the
cache, split, trained on and evaluated; and every bad input gets one clear line."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot import checkpoint, data
from fewshot.config import apply_overrides, eval_query, eval_ways, load_preset, preset_names
from fewshot.data import folder
from fewshot.data.images import is_prepared, read_dataset
from fewshot.errors import FewshotError

from helpers import one_error_line, run

PALETTE = {3: (10, 200, 60), 7: (250, 20, 120)}
FAST = ["--set", "steps=2", "--set", "meta_batch=2", "--set", "filters=8", "--set", "val_every=2",
        "--set", "val_tasks=2", "--set", "log_every=2", "--set", "save_every=2", "--no-progress"]


def solid(path, mode, size, value):
    """A one-colour image; returns the RGB colour it should become."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.new("P", size, value)
        image.putpalette([c for i in range(256) for c in PALETTE.get(i, (0, 0, 0))])
        rgb = PALETTE[value]
    elif mode == "LA":
        image, rgb = Image.new("LA", size, (value, 128)), (value,) * 3
    else:
        image = Image.new(mode, size, value)
        rgb = (value,) * 3 if mode == "L" else value[:3]
    image.save(path)
    return rgb


def halves(path, size, left, right):
    """Left half one colour, right half another: the import must keep left and right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:, :width // 2], pixels[:, width // 2:] = left, right
    Image.fromarray(pixels).save(path)


def prepared(home, name, size=28):
    dataset = read_dataset(home / name, size)
    return dataset, {c.name: c for c in dataset.classes}


@pytest.fixture
def split_tree(tmp_path):
    """{train,val,test}/<class>/ with every kind of image; {relative path: expected RGB}."""
    root = tmp_path / "mine"
    expected = {
        "train/alpha/a1.png": solid(root / "train/alpha/a1.png", "RGB", (31, 17), (200, 10, 30)),
        "train/alpha/a2.PNG": solid(root / "train/alpha/a2.PNG", "RGB", (17, 31), (5, 90, 250)),
        "train/alpha/a3.bmp": solid(root / "train/alpha/a3.bmp", "RGB", (64, 64), (128, 128, 0)),
        "train/beta/b1.png": solid(root / "train/beta/b1.png", "L", (64, 64), 77),
        "train/beta/b2.png": solid(root / "train/beta/b2.png", "L", (28, 28), 230),
        "train/gamma/g1.gif": solid(root / "train/gamma/g1.gif", "P", (45, 9), 3),
        "train/gamma/g2.png": solid(root / "train/gamma/g2.png", "P", (9, 45), 7),
        "val/delta/d1.png": solid(root / "val/delta/d1.png", "RGBA", (33, 33), (40, 50, 60, 0)),
        "val/delta/d2.png": solid(root / "val/delta/d2.png", "LA", (100, 3), 150),
        "test/eps/e1.png": solid(root / "test/eps/e1.png", "L", (5, 5), 0),
        "test/eps/e2.png": solid(root / "test/eps/e2.png", "RGB", (1000, 2), (255, 255, 255)),
    }
    (root / "train/alpha/notes.txt").write_text("not an image: skipped")
    (root / "train/empty").mkdir()  # a class folder without images is no class
    return root, expected


def test_split_tree_of_mixed_sizes_and_modes(split_tree, fewshot_home, capsys):
    root, expected = split_tree
    code, out, err = run(capsys, "data", "folder", "--from", root, "--name", "mine", "--no-progress")
    assert code == 0, err
    assert "prepared 5 classes (3 train, 1 val, 1 test), 11 images at 28x28" in out
    dataset, classes = prepared(fewshot_home, "mine")
    assert dataset.images.shape == (11, 3, 28, 28) and dataset.images.dtype == np.uint8
    assert dataset.meta["dataset"] == "folder" and dataset.meta["channels"] == 3
    assert dataset.meta["source"] == str(root.resolve()) and dataset.meta["sizes"] == [28]
    assert {n: (c.group, c.count) for n, c in classes.items()} == {
        "alpha": ("train", 3), "beta": ("train", 2), "gamma": ("train", 2), "delta": ("val", 2), "eps": ("test", 2)}
    for name, c in classes.items():
        split = c.group
        files = sorted(k for k in expected if k.startswith(f"{split}/{name}/"))
        for row, key in zip(range(c.start, c.start + c.count), files):
            pixels = dataset.images[row].astype(int)
            for channel, value in enumerate(expected[key]):  # one colour in, the same colour out
                assert np.abs(pixels[channel] - value).max() <= 1, (key, channel, value)
    refs = folder.splits(dataset)
    assert sorted(r.name for r in refs["train"]) == ["alpha", "beta", "gamma"]
    assert [r.name for r in refs["val"]] == ["delta"] and [r.name for r in refs["test"]] == ["eps"]


def test_left_stays_left_and_size_is_an_option(tmp_path, fewshot_home, capsys):
    root = tmp_path / "tree"
    for i in range(3):
        halves(root / "c" / f"{i}.png", (41, 23), (255, 0, 0), (0, 0, 255))
    code, out, err = run(capsys, "data", "folder", "--from", root, "--name", "h", "--size", "20",
                         "--ratios", "1,0,0", "--no-progress")
    assert code == 0, err
    assert "3 images at 20x20" in out
    images = read_dataset(fewshot_home / "h", 20).images
    assert images.shape == (3, 3, 20, 20)
    assert (images[:, 0, :, :8] >= 250).all() and (images[:, 2, :, :8] <= 5).all()   # red on the left
    assert (images[:, 2, :, -8:] >= 250).all() and (images[:, 0, :, -8:] <= 5).all()  # blue on the right


def test_gray_images_give_one_channel_and_any_colour_gives_three(tmp_path, fewshot_home, capsys):
    gray = tmp_path / "gray"
    solid(gray / "a" / "1.png", "L", (30, 20), 60)
    solid(gray / "a" / "2.png", "LA", (20, 30), 61)
    Image.new("1", (13, 13), 1).save(gray / "a" / "3.png")
    solid(gray / "b" / "1.bmp", "L", (28, 28), 200)
    code, _, err = run(capsys, "data", "folder", "--from", gray, "--name", "gray", "--no-progress")
    assert code == 0, err
    dataset, classes = prepared(fewshot_home, "gray")
    assert dataset.meta["channels"] == 1 and dataset.images.shape == (4, 1, 28, 28)
    assert [int(dataset.images[classes["a"].start + i].mean()) for i in range(3)] == [60, 61, 255]
    assert set(np.unique(dataset.images[classes["b"].start])) == {200}

    solid(gray / "c" / "1.png", "RGB", (28, 28), (0, 100, 200))  # one colour image among gray ones
    code, _, err = run(capsys, "data", "folder", "--from", gray, "--name", "mixed", "--no-progress")
    assert code == 0, err
    dataset, classes = prepared(fewshot_home, "mixed")
    assert dataset.meta["channels"] == 3 and dataset.images.shape == (5, 3, 28, 28)
    gray_image = dataset.images[classes["a"].start]
    assert (gray_image == 60).all()  # a gray image becomes three equal channels
    assert [int(v) for v in dataset.images[classes["c"].start][:, 0, 0]] == [0, 100, 200]
    # --channels overrides the detection
    code, _, err = run(capsys, "data", "folder", "--from", gray, "--name", "forced", "--channels", "1", "--no-progress")
    assert code == 0, err
    dataset, classes = prepared(fewshot_home, "forced")
    assert dataset.images.shape == (5, 1, 28, 28)
    expected = Image.new("RGB", (1, 1), (0, 100, 200)).convert("L").getpixel((0, 0))
    assert set(np.unique(dataset.images[classes["c"].start])) == {expected}


def test_colour_after_many_gray_images_still_gives_three_channels(tmp_path, fewshot_home, capsys):
    root = tmp_path / "late"
    for c in range(10):
        for i in range(21):
            solid(root / f"gray{c}" / f"{i:02d}.png", "L", (8, 8), 100)
    solid(root / "zz-colour" / "0.png", "RGB", (8, 8), (255, 0, 0))
    code, _, err = run(capsys, "data", "folder", "--from", root, "--name", "late", "--no-progress")
    assert code == 0, err
    dataset, classes = prepared(fewshot_home, "late")
    assert dataset.meta["channels"] == 3
    assert [int(v) for v in dataset.images[classes["zz-colour"].start][:, 0, 0]] == [255, 0, 0]


def test_sixteen_bit_gray_png_keeps_its_gray_level(tmp_path, fewshot_home, capsys):
    root = tmp_path / "deep"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((30, 30), 30000, np.uint16)).save(root / "a" / "1.png")
    assert Image.open(root / "a" / "1.png").mode.startswith("I;16")
    code, _, err = run(capsys, "data", "folder", "--from", root, "--name", "deep", "--no-progress")
    assert code == 0, err
    images = read_dataset(fewshot_home / "deep", 28).images
    assert abs(int(images[0].mean()) - round(30000 / 257)) <= 1  # 30000 of 65535 is gray 117 of 255


def unsplit_tree(root, classes=25, per_class=2):
    for c in range(classes):
        for i in range(per_class):
            solid(root / f"class{c:02d}" / f"{i}.png", "L", (8 + c, 8), c * 10)
    return root


def groups(home, name):
    return {c.name: c.group for c in read_dataset(home / name, 28).classes}


def counts_in(out):
    return {g: int(n) for n, g in re.findall(r"(\d+) (train|val|test)", out)}


def test_unsplit_tree_is_split_by_seeded_ratios(tmp_path, fewshot_home, capsys):
    root = unsplit_tree(tmp_path / "flat")
    outputs = {}
    for name, extra in (("a", ["--ratios", "0.6,0.2,0.2", "--seed", "3"]),
                        ("b", ["--ratios", "0.6,0.2,0.2", "--seed", "3"]),
                        ("c", ["--ratios", "0.6,0.2,0.2", "--seed", "4"]),
                        ("d", [])):
        code, outputs[name], err = run(capsys, "data", "folder", "--from", root, "--name", name, *extra,
                                       "--no-progress")
        assert code == 0, err
    a, b, c, d = (groups(fewshot_home, n) for n in "abcd")
    assert counts_in(outputs["a"]) == {"train": 15, "val": 5, "test": 5}
    assert counts_in(outputs["d"]) == {"train": 16, "val": 4, "test": 5}  # the default 0.64,0.16,0.20
    for assignment in (a, c, d):
        assert sorted(assignment) == [f"class{i:02d}" for i in range(25)]
    assert a == b  # the same seed: the same classes in each split
    assert a != c and sorted(a.values()) == sorted(c.values())  # another seed: other classes, same counts
    assert a == folder.split_classes(sorted(a), (0.6, 0.2, 0.2), 3)
    # every split's classes keep their own images
    dataset = read_dataset(fewshot_home / "a", 28)
    for cls in dataset.classes:
        index = int(cls.name[5:])
        assert cls.count == 2 and (dataset.images[cls.start:cls.start + 2] == index * 10).all()


def test_a_dataset_prepared_at_another_size_is_decoded_again_with_its_split(tmp_path, fewshot_home, capsys):
    root = unsplit_tree(tmp_path / "flat", classes=20)
    code, _, err = run(capsys, "data", "folder", "--from", root, "--name", "sized", "--size", "20",
                       "--ratios", "0.5,0.25,0.25", "--seed", "9", "--no-progress")
    assert code == 0, err
    before = {c.name: c.group for c in read_dataset(fewshot_home / "sized", 20).classes}
    assert not is_prepared(fewshot_home / "sized", 28)
    config = apply_overrides(load_preset("omniglot-5w1s"), {"data": "sized"})
    dataset, refs = data.load(config, progress=False)
    assert dataset.images.shape == (40, 1, 28, 28)
    assert {c.name: c.group for c in dataset.classes} == before
    assert {s: len(r) for s, r in refs.items()} == {"train": 10, "val": 5, "test": 5}
    # issue 23: the other size is decoded into a cache; nothing but `fewshot data` writes into a dataset
    assert read_dataset(fewshot_home / "sized", None).meta["sizes"] == [20]
    assert dataset.root.parent == fewshot_home / "cache"


def corrupt_tree(root):
    unsplit_tree(root, classes=6)
    good = (root / "class01" / "0.png").read_bytes()
    return {"garbage": b"this is not an image at all", "truncated": good[:len(good) // 2], "empty": b""}


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_an_unreadable_image_is_named(tmp_path, fewshot_home, capsys, kind):
    root = tmp_path / "tree"
    bad = root / "class03" / f"zz-{kind}.png"
    blob = corrupt_tree(root)[kind]
    bad.write_bytes(blob)
    code, out, err = run(capsys, "data", "folder", "--from", root, "--name", "broken", "--no-progress")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert f"cannot read image {bad}" in line
    assert not is_prepared(fewshot_home / "broken")  # no half-written dataset is left


@pytest.mark.parametrize("make,message", [
    (lambda root: root.mkdir(), "holds no class folders with images"),
    (lambda root: ((root / "a").mkdir(parents=True), (root / "a" / "x.txt").write_text("x")),
     "holds no class folders with images"),
    (lambda root: (root.mkdir(), solid(root / "loose.png", "L", (4, 4), 1)), "holds no class folders with images"),
    (lambda root: ((root / "train").mkdir(parents=True), (root / "val").mkdir()), "holds no class folders with images"),
    (lambda root: None, "is not a folder"),
    (lambda root: (root.parent.mkdir(exist_ok=True), root.write_text("a file")), "is not a folder"),
])
def test_an_empty_or_missing_tree_gets_one_line(tmp_path, capsys, make, message):
    root = tmp_path / "in" / "tree"
    root.parent.mkdir()
    make(root)
    code, _, err = run(capsys, "data", "folder", "--from", root, "--name", "x", "--no-progress")
    assert code == 2
    line = one_error_line(err)
    assert message in line and str(root) in line


@pytest.mark.parametrize("argv,message", [
    (["--ratios", "0.5,0.5"], "three ratios that sum to 1"),
    (["--ratios", "0.5,0.4,0.4"], "three ratios that sum to 1"),
    (["--ratios", "a,b,c"], "--ratios takes three ratios"),
    ([], "takes --from DIR"),
])
def test_bad_options_get_one_line(tmp_path, capsys, argv, message):
    root = unsplit_tree(tmp_path / "flat", classes=3)
    source = [] if not argv else ["--from", root]
    code, _, err = run(capsys, "data", "folder", *source, "--name", "x", *argv, "--no-progress")
    assert code == 2 and message in one_error_line(err)


def task_tree(root, mode="RGB", sizes=((30, 30), (41, 19), (64, 64)), per_split=(6, 5, 5), rare=None):
    """Split tree of solid-colour classes; `rare` = (class name, image count) in train."""
    rng = np.random.default_rng(0)
    colours = {}
    for split, count in zip(("train", "val", "test"), per_split):
        for c in range(count):
            name = f"{split}-{c}"
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            colours[name] = colour
            for i, size in enumerate(sizes):
                solid(root / split / name / f"{i}.png", mode, size, colour)
    if rare:
        name, count = rare
        for i in range(count):
            solid(root / "train" / name / f"{i}.png", mode, (20, 20), (1, 2, 3))
    return colours


@pytest.mark.parametrize("count,sets,need", [(1, [], 2), (2, ["--set", "query=2"], 3)])
def test_a_class_too_small_for_a_task_is_named_with_its_count(tmp_path, capsys, count, sets, need):
    task_tree(tmp_path / "tree", rare=("rare-class", count))
    code, _, err = run(capsys, "data", "folder", "--from", tmp_path / "tree", "--name", "small", "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--data", "small", "--out", tmp_path / "run", *sets, *FAST)
    assert code == 2
    line = one_error_line(err)
    assert f"need {need} images per class" in line and f"class 'rare-class' of the train split has {count}" in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_too_few_classes_and_a_missing_split_are_named(tmp_path, capsys):
    task_tree(tmp_path / "few", per_split=(3, 5, 5))
    task_tree(tmp_path / "noval", per_split=(6, 0, 5))
    for name in ("few", "noval"):
        code, _, err = run(capsys, "data", "folder", "--from", tmp_path / name, "--name", name, "--no-progress")
        assert code == 0, err
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--data", "few", "--out", tmp_path / "a", *FAST)
    assert code == 2 and "5-way tasks need 5 classes but the train split has 3" in one_error_line(err)
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--data", "noval", "--out", tmp_path / "b", *FAST)
    assert code == 2 and "the val split of" in one_error_line(err)


def test_train_and_eval_a_preset_on_a_colour_folder_dataset(tmp_path, capsys):
    colours = task_tree(tmp_path / "tree")
    code, out, err = run(capsys, "data", "folder", "--from", tmp_path / "tree", "--name", "colours", "--no-progress")
    assert code == 0, err
    assert "prepared 16 classes (6 train, 5 val, 5 test), 48 images" in out
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "omniglot-5w1s", "--data", "colours", "--out", out_dir, *FAST)
    assert code == 0, err
    assert "done: 2 steps" in out
    state = checkpoint.load(out_dir)
    assert state["preprocessing"] == {"dataset": "folder", "invert": False, "size": 28, "channels": 1, "mean": None,
                                      "std": None}  # the kind of data: recorded since issue 23
    code, out, err = run(capsys, "eval", out_dir, "--tasks", "5", "--no-progress")
    assert code == 0, err
    assert "test split: accuracy" in out and "5 tasks" in out
    # the preset wants 1 channel: the RGB cache is turned gray as Pillow would
    config = apply_overrides(load_preset("omniglot-5w1s"), {"data": "colours"})
    dataset, refs = data.load(config, progress=False)
    assert dataset.images.shape == (48, 3, 28, 28)
    task = data.sampler(config, dataset, refs, "test", seed=0).batch(0, 1)[0]
    assert task.support_x.shape == (5, 1, 28, 28) and task.query_x.shape == (5, 1, 28, 28)
    grays = {n: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) / 255
             for n, c in colours.items() if n.startswith("test")}
    seen = set()
    for image in torch.cat([task.support_x, task.query_x]):
        assert image.max() - image.min() < 2 / 255  # a solid image stays solid
        match = [n for n, g in grays.items() if abs(image.mean().item() - g) <= 1 / 255]
        assert match, image.mean().item()
        seen.update(match)
    assert len(seen) >= 5  # all five test classes were drawn


def test_a_class_in_two_split_folders_is_refused_and_loose_files_are_no_classes(tmp_path, fewshot_home, capsys):
    root = tmp_path / "tree"
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d", "e"]), ("test", ["f", "a"])):
        for name in names:
            solid(root / split / name / "0.png", "L", (8, 8), 10)
            solid(root / split / name / "1.png", "L", (8, 8), 20)
    code, _, err = run(capsys, "data", "folder", "--from", root, "--name", "leak", "--no-progress")
    assert code == 2
    line = one_error_line(err)
    assert "class 'a' is in both" in line and str(root / "train") in line and str(root / "test") in line
    assert not (fewshot_home / "leak").exists()
    (root / "test" / "a" / "0.png").rename(root / "test" / "curves.png")  # a plot saved among the classes
    (root / "test" / "a" / "1.png").rename(root / "curves.png")
    (root / "test" / "a").rmdir()
    code, out, err = run(capsys, "data", "folder", "--from", root, "--name", "clean", "--no-progress")
    assert code == 0, err
    dataset, classes = prepared(fewshot_home, "clean")
    assert sorted(classes) == ["a", "b", "c", "d", "e", "f"] and classes["a"].group == "train"


# -- a handful of one's own classes, as a new user meets them ------------------------------------

def handful(root, classes=6, per_class=8, prefix="class"):
    """`classes` class folders of `per_class` noise images each (distinct images)."""
    rng = np.random.default_rng(1)
    for c in range(classes):
        for i in range(per_class):
            path = root / f"{prefix}{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(path)
    return root


def hinted_sets(line):
    """The `--set KEY=N` pairs of an error line's fix, as CLI arguments."""
    return [arg for setting in re.findall(r"--set (\S+)", line.split("; fix: ")[1]) for arg in ("--set", setting)]


def test_six_classes_of_eight_images_train_any_preset_after_one_hint(tmp_path, fewshot_home, capsys):
    code, out, err = run(capsys, "data", "folder", "--from", handful(tmp_path / "mine"), "--name", "mine",
                         "--no-progress")
    assert code == 0 and err == ""  # 2 classes in each split: nothing to warn about
    assert counts_in(out) == {"train": 2, "val": 2, "test": 2}
    code, _, err = run(capsys, "train", "protonet-omniglot-5w1s", "--data", "mine", "--out", tmp_path / "run", *FAST)
    assert code == 2 and not (tmp_path / "run").exists()
    line = one_error_line(err)
    # the keys that block, each with the most that fits: 2 classes per split; 8 images = 1 shot + 7 queries.
    # `query` (5 at meta-train: 1 + 5 <= 8) does not block, so it is not named.
    assert line.endswith("; fix: --set ways=2 --set eval_ways=2 --set eval_query=7"), line
    assert "60-way tasks need 60 classes but the train split has 2" in line
    assert "5-way tasks need 5 classes but the val split has 2, the test split 2" in line
    code, out, err = run(capsys, "train", "protonet-omniglot-5w1s", "--data", "mine", "--out", tmp_path / "run",
                         *FAST, *hinted_sets(line))
    assert code == 0, err
    assert "done: 2 steps" in out
    code, out, err = run(capsys, "eval", tmp_path / "run", "--tasks", "5", "--no-progress")
    assert code == 0, err
    assert "2-way 1-shot, 7 queries per class" in out


IMAGE_PRESETS = [name for name in preset_names() if load_preset(name).dataset not in ("sinusoid", "embeddings")]


def test_every_image_preset_fits_a_handful_of_classes_after_its_hint(tmp_path, fewshot_home):
    """Every image preset on 6 classes x 8 images: refused with a hint, and the hint alone
    makes the tasks of every split fit (the check in data.sampler is what refuses a run)."""
    folder.import_folder(handful(tmp_path / "mine"), fewshot_home / "mine", progress=False)
    assert len(IMAGE_PRESETS) >= 20
    for name in IMAGE_PRESETS:
        config = apply_overrides(load_preset(name), {"data": "mine"})
        dataset, refs = data.load(config, progress=False)
        with pytest.raises(FewshotError) as refused:
            data.sampler(config, dataset, refs, "train", config.seed)
        sets = dict(s.split("=") for s in hinted_sets(str(refused.value))[1::2])
        assert sets and set(sets) <= {"ways", "eval_ways", "shots", "query", "eval_query"}, (name, sets)
        fixed = apply_overrides(config, {key: int(value) for key, value in sets.items()})
        for split in ("train", "val", "test"):
            ways, query = (None, None) if split == "train" else (eval_ways(fixed), eval_query(fixed))
            sampler = data.sampler(fixed, dataset, refs, split, 0, query=query, ways=ways)
            task = sampler.batch(0, 1)[0]
            assert len(task.support_y) == sampler.ways * fixed.shots, name


@pytest.mark.parametrize("total,ratios,least,counts", [
    (6, (0.64, 0.16, 0.20), 2, [2, 2, 2]),     # the ratios alone give 4, 1, 1
    (9, (0.64, 0.16, 0.20), 2, [5, 2, 2]),     # 6, 1, 2
    (5, (0.64, 0.16, 0.20), 2, [2, 2, 1]),     # test cannot have 2 while train keeps 2
    (4, (0.64, 0.16, 0.20), 2, [2, 2, 0]),
    (25, (0.64, 0.16, 0.20), 2, [16, 4, 5]),   # enough classes: the ratios alone
    (6, (0.2, 0.4, 0.4), 2, [2, 2, 2]),        # train topped up too (1, 2, 3)
    (3, (1.0, 0.0, 0.0), 2, [3, 0, 0]),        # a split without a share gets no classes
    (6, (0.64, 0.16, 0.20), 0, [4, 1, 1]),     # least 0: the rule of imports before it
    (3, (0.5, 0.5, 0.0), 0, [2, 1, 0]),        # two roundings up never overdraw
])
def test_split_counts_keep_two_classes_in_each_split_with_a_share(total, ratios, least, counts):
    assert folder.split_counts(total, ratios, least) == counts
    names = [f"c{i}" for i in range(total)]
    assignment = folder.split_classes(names, ratios, seed=0, least=least)
    assert [sum(g == s for g in assignment.values()) for s in ("train", "val", "test")] == counts


def test_too_few_classes_for_a_split_are_said_at_import(tmp_path, fewshot_home, capsys):
    code, out, err = run(capsys, "data", "folder", "--from", handful(tmp_path / "five", classes=5), "--name", "five",
                         "--no-progress")
    assert code == 0 and counts_in(out) == {"train": 2, "val": 2, "test": 1}
    assert err.strip() == ("note: the test split has 1 class, too few for any task (2-way at least); training "
                           "needs train and val, `fewshot eval` test: add class folders (6 classes give 2 to each "
                           "split), or split them yourself as <DIR>/{train,val,test}/<class>/")


def test_an_import_from_before_the_rule_is_decoded_again_with_its_own_split(tmp_path, fewshot_home):
    source = handful(tmp_path / "mine")
    folder.import_folder(source, fewshot_home / "old", size=20, progress=False, least=0)
    index = fewshot_home / "old" / "index.json"
    stored = __import__("json").loads(index.read_text())
    del stored["meta"]["least"]  # as imports before the rule wrote it
    index.write_text(__import__("json").dumps(stored))
    before = {c.name: c.group for c in read_dataset(fewshot_home / "old", 20).classes}
    assert sorted(before.values()).count("train") == 4  # 4, 1, 1 by the ratios alone
    dataset, refs = data.load(apply_overrides(load_preset("omniglot-5w1s"), {"data": "old"}), progress=False)
    assert dataset.images.shape[-1] == 28 and {c.name: c.group for c in dataset.classes} == before
    assert {s: len(r) for s, r in refs.items()} == {"train": 4, "val": 1, "test": 1}


def test_evaluation_hints_name_the_eval_keys_as_training_settings(tmp_path, fewshot_home):
    folder.import_folder(handful(tmp_path / "mine"), fewshot_home / "mine", progress=False)
    config = apply_overrides(load_preset("protonet-omniglot-5w1s"), {"data": "mine", "eval_query": 10})
    dataset, refs = data.load(config, progress=False)
    with pytest.raises(FewshotError) as refused:
        data.sampler(config, dataset, refs, "test", 0, query=eval_query(config), ways=eval_ways(config))
    assert str(refused.value).endswith(
        "fix: train with --set eval_ways=2 --set eval_query=7 (a run's task settings are fixed at training), "
        "or use data with more classes and images")
    # eval_ways unset: evaluation takes `ways`, and the hint names `ways`
    config = apply_overrides(config, {"eval_ways": None, "ways": 3, "eval_query": 1})
    with pytest.raises(FewshotError, match=r"3-way tasks need 3 classes but the val split has 2; "
                                           r"fix: train with --set ways=2 \("):
        data.sampler(config, dataset, refs, "val", 0, query=eval_query(config), ways=eval_ways(config))


def test_what_no_setting_can_fix_is_named_as_a_change_to_the_data(tmp_path, fewshot_home):
    root = tmp_path / "tree"
    for split, classes in (("train", 3), ("val", 1), ("test", 2)):
        handful(root / split, classes=classes, per_class=4, prefix=f"{split}-")
    for i in range(1, 4):
        (root / "train" / "train-0" / f"{i}.png").unlink()  # one image left
    folder.import_folder(root, fewshot_home / "odd", progress=False)
    config = apply_overrides(load_preset("omniglot-5w1s"), {"data": "odd"})
    dataset, refs = data.load(config, progress=False)
    with pytest.raises(FewshotError) as refused:
        data.sampler(config, dataset, refs, "train", 0)
    line = str(refused.value)
    assert "give the val split 2 classes at least (a task has 2)" in line
    assert "add images to class 'train-0' of the train split or remove it" in line
    assert line.endswith("; --set ways=2")  # what a setting can fix is still named, with what fits


def test_a_features_preset_on_images_is_refused_before_anything_is_decoded(tmp_path, fewshot_home):
    folder.import_folder(handful(tmp_path / "mine"), fewshot_home / "mine", progress=False)
    config = apply_overrides(load_preset("leo-omniglot-5w1s"), {"data": "mine"})
    with pytest.raises(FewshotError, match=r"holds images \(folder\), but this preset \(dataset: embeddings\) "
                                           r"reads image features; make features from it with `fewshot embed"):
        data.load(config, progress=False)
    assert sorted(p.name for p in (fewshot_home / "mine").iterdir()) == ["images-28.npy", "index.json"]
