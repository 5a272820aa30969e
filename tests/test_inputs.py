"""How images reach a trained model (fewshot.inputs): a LEO model, which learned on
embeddings, reads images through the backbone that made them: beside a run's
embeddings, or carried in a shipped model's weights file; and `fewshot embed
--from-model` makes the same embedding files again from a shipped model's backbone."""

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot import checkpoint, zoo
from fewshot.config import load_preset
from fewshot.data.embeddings import read_pickle
from fewshot.data.images import read_dataset, write_dataset
from fewshot.embed import embed
from fewshot.errors import FewshotError
from fewshot.inputs import image_inputs
from fewshot.train import train

from helpers import one_error_line, run, script, shipping_workplace, tiny_config

NAME = "tiny-leo"


@pytest.fixture(scope="module")
def leo(tmp_path_factory):
    """A tiny backbone pretrained by `fewshot embed` into FEWSHOT_HOME/emb (named, as a
    user's cache), a LEO run trained on its embeddings, and that run shipped: (base
    folder, FEWSHOT_HOME, models folder, card)."""
    base = tmp_path_factory.mktemp("inputs")
    with shipping_workplace(base) as home:
        embed(tiny_config(data="tagged", filters=16), home / "emb", steps=4, batch_size=8, progress=False,
              crops=("center",), val_every=2)
        config = load_preset("leo-miniimagenet-conv4-5w1s").unchecked_replace(
            data="emb", embedding_dim=16, query=1, meta_batch=2, steps=4, log_every=2, val_every=2, val_tasks=3, save_every=2,
            eval_tasks=5)
        train(config, "leo-run", progress=False)
        assert script("ship_model").main(["leo-run", NAME, "--machine", "the test machine", "--no-progress",
                                          "--paper", "61.76 +- 0.08%", "--source", "Rusu et al. 2019"]) == 0
        card = zoo.card(NAME)
    return base, home, base / "models", card


@pytest.fixture
def using(leo, monkeypatch):
    base, home, models, _ = leo
    monkeypatch.setenv("FEWSHOT_HOME", str(home))
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(models))
    monkeypatch.chdir(base)
    return leo


def pixels(count=4, side=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, 1, side, side), dtype=np.uint8)


def test_a_shipped_leo_model_carries_the_backbone_that_made_its_embeddings(using):
    base, home, models, card = using
    shipped = checkpoint.load(NAME, run=True)
    assert set(shipped["backbone"]) == {"config", "model", "step", "preprocessing"}
    beside_the_run = checkpoint.load(base / "leo-run", run=True)
    assert "backbone" not in beside_the_run
    assert card.backbone.startswith("conv4 (16 filters, 16-d features) pretrained by `fewshot embed`")
    assert f"pretraining step {shipped['backbone']['step']}" in card.backbone
    # the shipped backbone and the one `fewshot embed` left give the same embeddings of the same images
    x = pixels()
    torch.testing.assert_close(image_inputs(shipped)(x), image_inputs(beside_the_run)(x), rtol=0, atol=0)
    # and they are the embeddings the files hold: the first training image of the dataset
    first = np.load(home / "tagged" / "images-16.npy", mmap_mode="r")[:1]
    stored, _ = read_pickle(home / "emb" / "center" / "train_embeddings.pkl", 16)
    torch.testing.assert_close(image_inputs(shipped)(np.array(first))[0], torch.from_numpy(stored[0]),
                               rtol=0, atol=1e-6)
    assert card.data == "emb"  # a name under FEWSHOT_HOME, not a path of the machine


def test_a_shipped_leo_model_predicts_images_with_no_embed_folder(using, tmp_path, capsys, monkeypatch):
    base, home, models, card = using
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / "empty-home"))  # no embed folder, no dataset
    (tmp_path / "query").mkdir()
    for c in range(5):
        (tmp_path / "support" / f"class{c}").mkdir(parents=True)
        Image.fromarray(pixels(1, seed=c)[0, 0]).save(tmp_path / "support" / f"class{c}" / "0.png")
        for i, image in enumerate(pixels(2, seed=10 + c)):
            Image.fromarray(image[0]).save(tmp_path / "query" / f"{c}-{i}.png")
    code, out, err = run(capsys, "predict", NAME, "--support", tmp_path / "support", "--query", tmp_path / "query")
    assert code == 0, err
    assert out.count(".png") == 10


def test_a_leo_run_without_its_backbone_cannot_read_images(using, tmp_path, capsys):
    """The run itself finds its backbone beside its embeddings only; copied away from them, it
    says so, while the shipped model of the same run still reads images."""
    base, home, models, card = using
    state = checkpoint.load(base / "leo-run", run=True)
    moved = dict(state, config=state["config"].unchecked_replace(data=str(tmp_path / "elsewhere")),
                 data_location=None)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FewshotError, match="image backbone that made them"):
        image_inputs(moved)
    assert image_inputs(checkpoint.load(NAME, run=True)).size == 16


def test_fewshot_embed_from_a_shipped_model_writes_the_same_embeddings(using, capsys):
    base, home, models, card = using
    code, out, err = run(capsys, "embed", "--from-model", NAME, "--out", "again", "--crops", "center",
                         "--no-progress")
    assert code == 0, err
    assert f"with the image backbone of {NAME}" in out
    for split in ("train", "val", "test"):
        made, made_keys = read_pickle(base / "again" / "center" / f"{split}_embeddings.pkl", 16)
        first, first_keys = read_pickle(home / "emb" / "center" / f"{split}_embeddings.pkl", 16)
        assert made_keys == first_keys
        np.testing.assert_array_equal(made, first)
    # the folder is what `fewshot embed` leaves: a LEO run trained on it finds the backbone too
    from fewshot.embed import embedding_weights
    assert embedding_weights(base / "again").name == "pretrain-best.pt"
    # and the shipped model scores its card's figure on them, exactly
    code, out, err = run(capsys, "eval", NAME, "--data", base / "again", "--json")
    assert code == 0, err
    import json
    result = json.loads(out)
    assert (result["mean"], result["ci95"]) == (card.test_mean, card.test_ci95)


def test_fewshot_embed_from_a_model_refuses_what_it_cannot_use(using, capsys, tmp_path):
    base, home, models, card = using
    code, _, err = run(capsys, "embed", "maml-miniimagenet-5w1s", "--from-model", NAME, "--out", tmp_path / "x")
    assert code == 2 and "not both" in one_error_line(err)
    code, _, err = run(capsys, "embed", "--out", tmp_path / "x")
    assert code == 2 and "--from-model" in one_error_line(err)
    code, _, err = run(capsys, "embed", "--from-model", "no-such-model", "--out", tmp_path / "x")
    assert code == 2 and "no-such-model" in one_error_line(err)
    # another dataset than the one the backbone was pretrained on: its ink the other way
    dataset = read_dataset(home / "tagged", 16)
    write_dataset(home / "inverted", np.array(dataset.images), dataset.classes, {**dataset.meta, "invert": True})
    code, _, err = run(capsys, "embed", "--from-model", NAME, "--data", "inverted", "--out", tmp_path / "y")
    assert code == 2 and "not the image dataset the backbone" in one_error_line(err)
    # a model of images has no backbone to lend
    image_run = tiny_config(data="tagged")
    train(image_run, tmp_path / "image-run", progress=False)
    code, _, err = run(capsys, "embed", "--from-model", tmp_path / "image-run", "--out", tmp_path / "z")
    assert code == 2 and "a model of images" in one_error_line(err)
    # pretraining's options have nothing to set when the backbone is already trained
    code, _, err = run(capsys, "embed", "--from-model", NAME, "--pretrain-steps", "10", "--out", tmp_path / "w")
    line = one_error_line(err)
    assert code == 2 and "--pretrain-steps sets pretraining" in line and "drop it" in line
    code, _, err = run(capsys, "embed", "--from-model", NAME, "--set", "filters=8", "--backbone", "conv4",
                       "--lr", "0.1", "--out", tmp_path / "w")
    assert code == 2 and "--set, --backbone, --lr set pretraining" in one_error_line(err)
    assert not any((tmp_path / name).exists() for name in ("w", "x", "y", "z"))
    # a model of embeddings has no pixels to shift at test
    code, _, err = run(capsys, "eval", NAME, "--shift", "1")
    assert code == 2 and "eval_shift: 1 would be ignored" in one_error_line(err) and "embeddings" in err


def test_a_shipped_leo_model_without_its_embeddings_says_how_to_make_them(using, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path))
    code, _, err = run(capsys, "eval", NAME)
    line = one_error_line(err)
    assert code == 2 and f"fewshot embed --from-model MODEL --out {tmp_path / 'emb'}" in line


def test_a_leo_run_finds_its_backbone_by_the_data_it_names(using, tmp_path, monkeypatch):
    """Beside embeddings named as a user names them: ~/..., or a name under FEWSHOT_HOME."""
    import shutil
    base, home, models, card = using
    state = checkpoint.load(base / "leo-run", run=True)
    x = pixels()
    expected = image_inputs(state)(x)
    shutil.copytree(home / "emb", tmp_path / "user" / "emb")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for named in ("~/emb", "emb"):
        moved = dict(state, config=state["config"].unchecked_replace(data=named), data_location=None)
        torch.testing.assert_close(image_inputs(moved)(x), expected, rtol=0, atol=0)
