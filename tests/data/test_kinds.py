"""The registry of dataset kinds: one module per kind, looked up by name, and no torch
until a sampler is built."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fewshot import data
from fewshot.data import DATASETS, SPLITS, DatasetKind, kinds
from fewshot.data.images import ImageClass, ImageDataset
from fewshot.config import Config, validate
from fewshot.errors import FewshotError


def test_every_kind_is_registered_by_its_own_module():
    assert DATASETS.names() == ["embeddings", "folder", "miniimagenet", "omniglot", "sinusoid"]
    shape = {name: (DATASETS.get(name).generated, DATASETS.get(name).features, DATASETS.get(name).default_size)
             for name in DATASETS.names()}
    assert shape == {"embeddings": (False, True, None), "folder": (False, False, 28),
                     "miniimagenet": (False, False, 84), "omniglot": (False, False, 28),
                     "sinusoid": (True, False, None)}
    for name in DATASETS.names():
        assert DATASETS.get(name).name == name
        assert DATASETS.get(name).__class__.__module__ == "fewshot.data.kinds"
    with pytest.raises(FewshotError, match=r"^unknown dataset 'imagenet'; choose one of: embeddings, folder, "
                                           r"miniimagenet, omniglot, sinusoid$"):
        data.kind("imagenet")


def test_splits_is_defined_once_and_imported_where_used():
    from fewshot.data import embeddings, folder, miniimagenet
    assert SPLITS == ("train", "val", "test")
    assert embeddings.SPLITS is SPLITS and folder.SPLITS is SPLITS and miniimagenet.SPLITS is SPLITS


def test_a_kind_in_one_file_is_loaded_and_split_like_the_others(tmp_path):
    """What adding a dataset takes: a module that registers a DatasetKind (here made in place)."""
    def prepare(source, folder, size=4, progress=True):
        from fewshot.data.images import write_dataset
        images = np.zeros((12, 1, size, size), np.uint8)
        classes = [ImageClass(f"c{i}", SPLITS[i % 3], 2 * i, 2) for i in range(6)]
        write_dataset(folder, images, classes, {"dataset": "grid-test", "source": str(source)})
        return folder

    kind = DatasetKind("grid-test", prepare=prepare, splits=kinds.group_splits, default_size=4)
    try:
        DATASETS.register("grid-test")(kind)
        (tmp_path / "raw").mkdir()
        # checked as a user's config is: the schema takes the kinds from the registry
        config = validate(Config(dataset="grid-test", data=str(tmp_path / "raw"), image_size=4, split="maml"))
        dataset, refs = data.load(config, progress=False)
        assert {s: [c.name for c in refs[s]] for s in SPLITS} == {"train": ["c0", "c3"], "val": ["c1", "c4"],
                                                                 "test": ["c2", "c5"]}
        assert isinstance(dataset, ImageDataset) and dataset.images.shape == (12, 1, 4, 4)
    finally:
        DATASETS.entries.pop("grid-test", None)


def test_naming_kinds_and_preparing_a_folder_import_no_torch(tmp_path):
    for c in range(3):
        (tmp_path / "tree" / f"c{c}").mkdir(parents=True)
        Image.new("L", (8, 8), c).save(tmp_path / "tree" / f"c{c}" / "0.png")
    probe = ("import sys\nfrom fewshot import data\nfrom fewshot.cli import main\n"
             "names = data.DATASETS.names()\n"
             "code = main(['data', 'folder', '--from', sys.argv[1], '--root', sys.argv[2], '--name', 'x', "
             "'--no-progress'])\n"
             "print(len(names), code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "tree"), str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-3:] == ["5", "0", "False"], done.stdout + done.stderr


def test_the_registry_alone_names_the_kinds_and_the_config_offers_exactly_the_crops():
    """The schema's `dataset` is text checked against DATASETS (no second list to keep in
    step); the crops are a Literal of the schema, kept equal to the embeddings module's."""
    from typing import get_args, get_type_hints

    from fewshot.data.embeddings import CROPS
    hints = get_type_hints(Config)
    assert hints["dataset"] is str
    with pytest.raises(FewshotError, match=r"^unknown dataset 'imagenet'; choose one of: embeddings, folder, "):
        validate(Config(dataset="imagenet"))
    for name in DATASETS.names():
        assert DATASETS.get(name).name == name
    assert get_args(hints["embedding_crop"]) == CROPS
