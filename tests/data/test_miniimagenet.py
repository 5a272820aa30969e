"""miniImageNet import: the real 60-per-class sample in ../shared/data/miniimagenet
(official CSVs with and without --allow-partial, the sample CSVs), a class-folder
tree of real JPEGs, learn2learn's pickles and the npz form written here, and the
bad inputs, each refused with one line naming the file or class."""
import csv
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, skip_without
from fewshot.data import EpisodeSampler
from fewshot.data import miniimagenet as mini
from fewshot.data.images import is_prepared, read_dataset
from fewshot.errors import FewshotError

SAMPLE = SHARED_DATA / "miniimagenet"


@pytest.fixture(scope="session")
def sample():
    skip_without(SAMPLE / "train.csv", "the real miniImageNet sample's CSVs")
    skip_without(SAMPLE / "images", "the real miniImageNet sample's images")
    return SAMPLE


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory, sample):
    """The 6,000-image sample imported once, with the official CSVs and allow_partial
    (benchmarks/load_time.py times this import and the cached start)."""
    folder = tmp_path_factory.mktemp("miniimagenet-cache")
    mini.import_miniimagenet(sample, folder, progress=False, allow_partial=True)
    return folder


@pytest.fixture
def made_sample(tmp_path):
    """A stand-in for the shared sample made here, for the bad-input tests: 5 classes per split
    of 4 random 84x84 JPEGs each, named as miniImageNet's (wnid + 8-digit index), listed in
    sample-<split>.csv files."""
    root = tmp_path / "made-sample"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s, split in enumerate(("train", "val", "test")):
        rows = []
        for c in range(5):
            wnid = f"n{90000000 + 10 * s + c}"
            for k in range(4):
                filename = f"{wnid}{k + 1:08d}.jpg"
                pixels = rng.integers(0, 256, size=(84, 84, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / filename, quality=90)
                rows.append((filename, wnid))
        write_csv(root / f"sample-{split}.csv", rows)
    return root


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, rows, header=("filename", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def pick(sample, per_split=2, per_class=4):
    """{split: [(filename, wnid), ...]}: the first `per_class` sample images of the first
    `per_split` classes of each split."""
    picked = {}
    for split in ("train", "val", "test"):
        rows, wnids = [], []
        for row in rows_of(sample / f"sample-{split}.csv"):
            if row["label"] not in wnids:
                if len(wnids) == per_split:
                    break
                wnids.append(row["label"])
            if sum(r[1] == row["label"] for r in rows) < per_class:
                rows.append((row["filename"], row["label"]))
        picked[split] = rows
    return picked


def small_copy(sample, root, per_split=2, per_class=4):
    """The users' layout, images/ beside the CSVs, with a few real JPEGs."""
    picked = pick(sample, per_split, per_class)
    (root / "images").mkdir(parents=True)
    for split, rows in picked.items():
        write_csv(root / f"{split}.csv", rows)
        for filename, _ in rows:
            shutil.copy(sample / "images" / filename, root / "images" / filename)
    return picked


def decoded(path):
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


# --- the real sample ----------------------------------------------------------------

def test_sample_with_official_csvs_and_allow_partial(sample, sample_cache):
    dataset = read_dataset(sample_cache, 84)
    assert dataset.images.shape == (6000, 3, 84, 84) and dataset.images.dtype == np.uint8
    meta = dataset.meta
    assert meta["dataset"] == "miniimagenet" and meta["channels"] == 3 and meta["invert"] is False
    assert meta["source"] == str(sample.resolve()) and meta["allow_partial"] is True and meta["sizes"] == [84]
    groups = {}
    for c in dataset.classes:
        groups.setdefault(c.group, []).append(c)
    assert {g: len(cs) for g, cs in groups.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(c.count == 60 for c in dataset.classes)
    # classes contiguous, train then val then test, sorted by wnid within a split
    assert [c.start for c in dataset.classes] == list(range(0, 6000, 60))
    assert [c.group for c in dataset.classes] == ["train"] * 64 + ["val"] * 16 + ["test"] * 20
    for split, classes in groups.items():
        official = {r["label"] for r in rows_of(sample / f"{split}.csv")}
        assert [c.name for c in classes] == sorted(official)
    # each class's rows are its images in CSV order, pixel for pixel
    by_name = {c.name: c for c in dataset.classes}
    for split in ("train", "val", "test"):
        rows = rows_of(sample / f"sample-{split}.csv")
        for row in (rows[0], rows[61], rows[-1]):
            c = by_name[row["label"]]
            position = [r["filename"] for r in rows if r["label"] == c.name].index(row["filename"])
            assert np.array_equal(dataset.images[c.start + position], decoded(sample / "images" / row["filename"]))
    assert mini.summary(dataset) == [
        "train: 64 classes, 3840 images, 60 per class (34560 of 38400 named images missing, imported with "
        "--allow-partial)",
        "val: 16 classes, 960 images, 60 per class (8640 of 9600 named images missing, imported with "
        "--allow-partial)",
        "test: 20 classes, 1200 images, 60 per class (10800 of 12000 named images missing, imported with "
        "--allow-partial)"]
    refs = mini.splits(dataset, "ignored", seed=3)
    assert {s: len(r) for s, r in refs.items()} == {"train": 64, "val": 16, "test": 20}
    first = refs["train"][0]
    assert (first.start, first.count, first.rotation, first.name) == (0, 60, 0, dataset.classes[0].name)


def test_a_second_start_maps_the_cache_instead_of_reading_it(sample_cache):
    """How fast that is, is measured by benchmarks/load_time.py, not asserted here."""
    dataset = read_dataset(sample_cache, 84)
    first = dataset.images[0].copy()
    assert isinstance(dataset.images, np.memmap) and first.shape == (3, 84, 84)


def test_mean_and_std_come_from_the_train_split_only(sample_cache):
    dataset = read_dataset(sample_cache, 84)
    train = [c for c in dataset.classes if c.group == "train"]
    end = train[-1].start + train[-1].count
    assert train[0].start == 0
    assert dataset.meta["stats_from"] == "train"
    images = np.asarray(dataset.images)
    for channel in range(3):
        pixels = images[:end, channel].astype(np.float32) / 255
        mean = pixels.mean(dtype=np.float64)
        assert dataset.meta["mean"][channel] == pytest.approx(mean, abs=1e-6)
        assert dataset.meta["std"][channel] == pytest.approx(pixels.std(dtype=np.float64), abs=1e-6)
        everything = images[:, channel].sum(dtype=np.int64) / images[:, channel].size / 255
        assert abs(everything - mean) > 1e-4  # the check tells train from all
    assert all(0.3 < m < 0.6 for m in dataset.meta["mean"]) and all(0.2 < s < 0.35 for s in dataset.meta["std"])


def test_official_csvs_without_allow_partial_are_refused_with_the_count(sample, tmp_path):
    with pytest.raises(FewshotError) as error:
        mini.import_miniimagenet(sample, tmp_path / "refused", progress=False)
    message = str(error.value)
    first_missing = next(r["filename"] for r in rows_of(sample / "train.csv")
                         if not (sample / "images" / r["filename"]).exists())
    assert message.startswith("54000 images named in the split files are missing")
    assert "train 34560 of 38400, val 8640 of 9600, test 10800 of 12000" in message
    assert first_missing in message and "--allow-partial" in message
    assert not is_prepared(tmp_path / "refused")


def test_sample_csvs_list_exactly_the_present_images(sample, sample_cache, tmp_path):
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(sample / f"sample-{split}.csv", csvs / f"{split}.csv")
    mini.import_miniimagenet(sample, tmp_path / "exact", progress=False, csv_dir=csvs)
    exact, partial = read_dataset(tmp_path / "exact", 84), read_dataset(sample_cache, 84)
    assert np.array_equal(exact.images, partial.images)
    assert [vars(c) for c in exact.classes] == [vars(c) for c in partial.classes]
    assert exact.meta["mean"] == partial.meta["mean"] and exact.meta["csv_dir"] == str(csvs.resolve())
    assert mini.summary(exact)[0] == "train: 64 classes, 3840 images, 60 per class"


# --- other forms ----------------------------------------------------------------

def test_class_folder_tree_takes_its_split_from_the_csvs(sample, tmp_path):
    picked = pick(sample, per_split=2, per_class=4)
    tree = tmp_path / "tree"
    for rows in picked.values():  # the 100-class re-split layout: train/<wnid>/ and val/<wnid>/
        for i, (filename, wnid) in enumerate(rows):
            where = tree / ("val" if i % 4 == 3 else "train") / wnid
            where.mkdir(parents=True, exist_ok=True)
            shutil.copy(sample / "images" / filename, where / filename)
    shutil.copy(sample / "images" / picked["train"][0][0], tree / "stray.jpg")  # not in a wnid folder
    csvs = tmp_path / "csvs"
    for split, rows in picked.items():
        write_csv(csvs / f"{split}.csv", rows)

    with pytest.raises(FewshotError, match="no split files .* --csv-dir DIR"):
        mini.import_miniimagenet(tree, tmp_path / "nocsv", progress=False)
    mini.import_miniimagenet(tree, tmp_path / "out", progress=False, csv_dir=csvs)
    dataset = read_dataset(tmp_path / "out", 84)
    assert dataset.meta["form"] == "tree" and dataset.images.shape == (24, 3, 84, 84)
    assert [(c.group, c.count) for c in dataset.classes] == [("train", 4)] * 2 + [("val", 4)] * 2 + [("test", 4)] * 2
    by_name = {c.name: c for c in dataset.classes}
    for rows in picked.values():
        for i, (filename, wnid) in enumerate(rows):
            assert np.array_equal(dataset.images[by_name[wnid].start + i % 4], decoded(sample / "images" / filename))
    # the CSVs in the tree's root are found without --csv-dir
    for split, rows in picked.items():
        write_csv(tree / f"{split}.csv", rows)
    mini.import_miniimagenet(tree, tmp_path / "again", progress=False)
    assert np.array_equal(read_dataset(tmp_path / "again", 84).images, dataset.images)


def learn2learn_files(root, rng, classes=None, per_class=7, protocol=pickle.HIGHEST_PROTOCOL):
    """mini-imagenet-cache-{train,validation,test}.pkl: image_data N x 84 x 84 x 3 uint8 and
    class_dict wnid -> indices, the indices of the classes interleaved."""
    classes = classes or {"train": ["n01000003", "n01000001", "n01000002"], "validation": ["n02000001"],
                          "test": ["n03000001", "n03000002"]}
    expected = {}
    root.mkdir(parents=True, exist_ok=True)
    for mode, wnids in classes.items():
        images = rng.integers(0, 256, (per_class * len(wnids), 84, 84, 3), dtype=np.uint8)
        class_dict = {w: list(range(i, len(images), len(wnids))) for i, w in enumerate(wnids)}
        with open(root / f"mini-imagenet-cache-{mode}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=protocol)
        for w, rows in class_dict.items():
            expected[w] = ({"validation": "val"}.get(mode, mode), images[rows].transpose(0, 3, 1, 2))
    return expected


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_learn2learn_pickles(tmp_path, protocol):
    expected = learn2learn_files(tmp_path / "l2l", np.random.default_rng(0), protocol=protocol)
    mini.import_miniimagenet(tmp_path / "l2l", tmp_path / "out", progress=False)
    dataset = read_dataset(tmp_path / "out", 84)
    assert dataset.meta["form"] == "arrays" and dataset.images.shape == (42, 3, 84, 84)
    assert [(c.name, c.group, c.count) for c in dataset.classes] == [
        ("n01000001", "train", 7), ("n01000002", "train", 7), ("n01000003", "train", 7), ("n02000001", "val", 7),
        ("n03000001", "test", 7), ("n03000002", "test", 7)]
    for c in dataset.classes:
        assert c.group == expected[c.name][0]
        assert np.array_equal(dataset.images[c.start:c.start + c.count], expected[c.name][1])
    train = dataset.images[:21].astype(np.float64) / 255
    assert dataset.meta["mean"] == pytest.approx(train.mean((0, 2, 3)), abs=1e-12)
    assert dataset.meta["std"] == pytest.approx(train.std((0, 2, 3)), abs=1e-12)
    # another size is resized with LANCZOS, as the JPEG forms are
    mini.import_miniimagenet(tmp_path / "l2l", tmp_path / "out", size=42, progress=False)
    small = read_dataset(tmp_path / "out", 42)
    first = expected["n01000001"][1][0].transpose(1, 2, 0)
    want = np.asarray(Image.fromarray(first).resize((42, 42), Image.LANCZOS)).transpose(2, 0, 1)
    assert small.images.shape == (42, 3, 42, 42) and np.array_equal(small.images[0], want)
    assert small.meta["sizes"] == [42, 84]


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    learn2learn_files(tmp_path / "l2l", np.random.default_rng(1))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "l2l" / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, f)
    with pytest.raises(FewshotError, match="mini-imagenet-cache-test.pkl.*refusing to build"):
        mini.import_miniimagenet(tmp_path / "l2l", tmp_path / "out", progress=False)
    assert not (tmp_path / "pwned").exists() and not is_prepared(tmp_path / "out")


def test_npz_files_with_integer_or_name_labels(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "npz"
    root.mkdir()
    train = rng.integers(0, 256, (10, 84, 84, 3), dtype=np.uint8)
    np.savez(root / "train.npz", features=train, targets=np.array([1, 0] * 5),
             class_names=np.array(["n01000002", "n01000001"]))
    val = rng.integers(0, 256, (6, 3, 84, 84), dtype=np.uint8)  # channels first works too
    np.savez(root / "val.npz", images=val, labels=np.array(["n02000001"] * 3 + ["n02000002"] * 3))
    test = rng.integers(0, 256, (4, 84, 84, 3), dtype=np.uint8)
    np.savez(root / "test.npz", images=test, labels=np.array([0, 0, 0, 0]))
    mini.import_miniimagenet(root, tmp_path / "out", progress=False)
    dataset = read_dataset(tmp_path / "out", 84)
    assert [(c.name, c.group, c.count) for c in dataset.classes] == [
        ("n01000001", "train", 5), ("n01000002", "train", 5), ("n02000001", "val", 3), ("n02000002", "val", 3),
        ("test-class0", "test", 4)]
    # label 1 names n01000001 and marks the even rows
    assert np.array_equal(dataset.images[0:5], train[0::2].transpose(0, 3, 1, 2))
    assert np.array_equal(dataset.images[5:10], train[1::2].transpose(0, 3, 1, 2))
    assert np.array_equal(dataset.images[10:16], val)
    assert np.array_equal(dataset.images[16:], test.transpose(0, 3, 1, 2))


def test_a_missing_split_file_needs_allow_partial(tmp_path):
    learn2learn_files(tmp_path / "l2l", np.random.default_rng(3),
                      classes={"train": ["n01000001"], "test": ["n03000001"]})
    with pytest.raises(FewshotError, match="no file for the val split .*--allow-partial"):
        mini.import_miniimagenet(tmp_path / "l2l", tmp_path / "out", progress=False)
    mini.import_miniimagenet(tmp_path / "l2l", tmp_path / "out", progress=False, allow_partial=True)
    assert [c.group for c in read_dataset(tmp_path / "out", 84).classes] == ["train", "test"]


# --- bad input ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_an_undecodable_image_is_named(made_sample, tmp_path, kind):
    root = tmp_path / "copy"
    picked = small_copy(made_sample, root)
    bad = root / "images" / picked["val"][2][0]
    blob = bad.read_bytes()
    bad.write_bytes({"garbage": b"not a jpeg", "truncated": blob[:len(blob) // 3], "empty": b""}[kind])
    with pytest.raises(FewshotError) as error:
        mini.import_miniimagenet(root, tmp_path / "out", progress=False)
    assert f"cannot read image {bad}" in str(error.value)
    assert not is_prepared(tmp_path / "out")


def test_a_csv_with_unknown_columns_is_named(made_sample, tmp_path):
    root = tmp_path / "copy"
    picked = small_copy(made_sample, root)
    write_csv(root / "val.csv", [(f, w, 1) for f, w in picked["val"]], header=("image", "wnid", "extra"))
    with pytest.raises(FewshotError) as error:
        mini.import_miniimagenet(root, tmp_path / "out", progress=False)
    message = str(error.value)
    assert f"{root / 'val.csv'} has columns image,wnid,extra; expected filename,label" in message


def test_no_csvs_say_how_to_give_them(made_sample, tmp_path):
    root = tmp_path / "copy"
    small_copy(made_sample, root)
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").unlink()
    with pytest.raises(FewshotError, match=r"no split files \(train.csv, val.csv, test.csv\) in .*--csv-dir DIR"):
        mini.import_miniimagenet(root, tmp_path / "out", progress=False)
    with pytest.raises(FewshotError, match="--csv-dir .* is not a folder"):
        mini.import_miniimagenet(root, tmp_path / "out", progress=False, csv_dir=tmp_path / "nowhere")


def test_shared_classes_between_splits_are_refused(made_sample, tmp_path):
    root = tmp_path / "copy"
    picked = small_copy(made_sample, root)
    write_csv(root / "test.csv", picked["test"] + picked["train"][:1])
    with pytest.raises(FewshotError, match=f"class {picked['train'][0][1]} is in both the train and the test"):
        mini.import_miniimagenet(root, tmp_path / "out", progress=False)


def test_a_class_with_fewer_images_than_a_task_needs_is_named(made_sample, tmp_path):
    root = tmp_path / "copy"
    picked = small_copy(made_sample, root, per_split=5, per_class=4)
    thin = picked["train"][4][1]
    for filename, wnid in picked["train"]:
        if wnid == thin and filename != picked["train"][4][0]:
            (root / "images" / filename).unlink()  # one image left of that class
    mini.import_miniimagenet(root, tmp_path / "out", progress=False, allow_partial=True)
    dataset = read_dataset(tmp_path / "out", 84)
    assert mini.summary(dataset)[0] == ("train: 5 classes, 17 images, 1-4 per class (3 of 20 named images "
                                        "missing, imported with --allow-partial)")
    refs = mini.splits(dataset)
    with pytest.raises(FewshotError) as error:
        EpisodeSampler(dataset.images, refs["train"], ways=5, shots=1, query=1, seed=0, split="train")
    assert f"need 2 images per class, but class '{thin}' of the train split has 1" in str(error.value)
    EpisodeSampler(dataset.images, refs["val"], ways=5, shots=1, query=3, seed=0, split="val")  # 4 each: enough
