"""LEO's embedding files: small files in LEO's format written here, read back into the
memory-mapped float cache, sampled unchanged, and the bad inputs refused with the file's name."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from fewshot import data
from fewshot.data import embeddings as emb
from fewshot.data.images import is_prepared, read_features
from fewshot.errors import FewshotError

from helpers import tiny_config

SPLIT_CLASSES = {"train": ["n01000001", "n01000002", "n01000003", "n01000004", "n01000005"],
                 "val": ["n02000001", "n02000002", "n02000003"], "test": ["n03000001", "n03000002", "n03000003"]}


def synthetic_split(split, dim=16, per_class=6, seed=0, spread=0.3):
    """(embeddings, labels, keys) of one split: per class a random centre plus noise,
    rows interleaved across classes (as a file need not group them)."""
    rng = np.random.default_rng([seed, list(emb.SPLITS).index(split)])
    classes = SPLIT_CLASSES[split]
    centres = rng.normal(size=(len(classes), dim))
    rows = [(c, i) for i in range(per_class) for c in range(len(classes))]  # interleaved
    embeddings = np.stack([centres[c] + spread * rng.normal(size=dim) for c, _ in rows]).astype(np.float32)
    labels = np.array([c for c, _ in rows])
    keys = [emb.make_key(classes[c], f"{i:05d}.JPEG", prefix=n) for n, (c, i) in enumerate(rows)]
    return embeddings, labels, keys


def write_synthetic(folder, dim=16, per_class=6, seed=0, spread=0.3):
    """A folder of LEO's three pickles; returns {split: (embeddings, labels, keys)}."""
    written = {}
    for split in emb.SPLITS:
        written[split] = synthetic_split(split, dim, per_class, seed, spread)
        emb.write_leo_pickles(folder, split, *written[split])
    return written


def test_the_written_files_are_what_the_reference_reader_expects(tmp_path):
    written = write_synthetic(tmp_path)
    with open(tmp_path / "train_embeddings.pkl", "rb") as f:
        raw = pickle.load(f, encoding="latin1")  # as deepmind/leo data.py DataProvider._load
    assert set(raw) == {"embeddings", "labels", "keys"}
    assert raw["embeddings"].dtype == np.float32 and raw["embeddings"].shape == (30, 16)
    assert raw["keys"].shape[0] == 30 and len(raw["labels"]) == 30
    # DataProvider._index_data: three fields on "-", the image file starting with its class
    for key in raw["keys"]:
        _, class_label, image_file = key.split("-")
        assert class_label == image_file.split("_")[0]
    np.testing.assert_array_equal(raw["embeddings"], written["train"][0])


def test_import_groups_classes_contiguously_by_split_and_keeps_the_values(tmp_path):
    written = write_synthetic(tmp_path / "raw")
    emb.import_embeddings(tmp_path / "raw", tmp_path / "cache", size=16, progress=False)
    assert is_prepared(tmp_path / "cache", 16) and not is_prepared(tmp_path / "cache", 640)
    dataset = read_features(tmp_path / "cache", 16)
    assert isinstance(dataset.images, np.memmap) and dataset.images.dtype == np.float32
    assert [c.group for c in dataset.classes] == ["train"] * 5 + ["val"] * 3 + ["test"] * 3
    assert [c.name for c in dataset.classes] == [n for s in emb.SPLITS for n in SPLIT_CLASSES[s]]
    start = 0
    for c in dataset.classes:
        assert c.start == start and c.count == 6
        start += c.count
        embeddings, labels, _ = written[c.group]
        expected = embeddings[labels == SPLIT_CLASSES[c.group].index(c.name)]
        np.testing.assert_array_equal(dataset.images[c.start:c.start + c.count], expected)
    assert dataset.meta["dataset"] == "embeddings" and dataset.meta["counts"]["val"]["classes"] == 3


def test_bytes_keys_as_in_the_multiview_files_are_read(tmp_path):
    for split in emb.SPLITS:
        embeddings, labels, keys = synthetic_split(split)
        with open(tmp_path / emb.file_name(split), "wb") as f:
            pickle.dump({"embeddings": embeddings, "labels": labels,
                         "keys": np.array([k.encode() for k in keys])}, f, protocol=2)
    emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)
    assert [c.name for c in read_features(tmp_path / "cache", 16).classes][:2] == ["n01000001", "n01000002"]


def test_a_dimension_mismatch_names_the_file(tmp_path):
    write_synthetic(tmp_path, dim=16)
    with pytest.raises(FewshotError, match=r"train_embeddings\.pkl: embeddings have dimension 16, expected 640"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=640, progress=False)
    assert not is_prepared(tmp_path / "cache")


def test_a_key_in_another_format_names_the_file_and_the_key(tmp_path):
    write_synthetic(tmp_path)
    embeddings, labels, keys = synthetic_split("val")
    keys[2] = "n02000001_00001.JPEG"  # no "-" fields
    with open(tmp_path / "val_embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": embeddings, "labels": labels, "keys": np.array(keys)}, f)
    with pytest.raises(FewshotError, match=r"val_embeddings\.pkl: key 'n02000001_00001\.JPEG' is not in LEO's key"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)
    keys[2] = "7-n02000001-n02000002_00001.JPEG"  # the class and the image file disagree
    with pytest.raises(FewshotError, match="not in LEO's key format"):
        emb.write_leo_pickles(tmp_path, "val", embeddings, labels, keys)


def test_missing_files_foreign_pickles_and_shared_classes_are_refused(tmp_path):
    written = write_synthetic(tmp_path)
    (tmp_path / "test_embeddings.pkl").unlink()
    with pytest.raises(FewshotError, match="lacks test_embeddings.pkl"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)
    with open(tmp_path / "test_embeddings.pkl", "wb") as f:
        pickle.dump({"features": written["test"][0]}, f)
    with pytest.raises(FewshotError, match=r"test_embeddings\.pkl holds features; a LEO embedding file"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)
    emb.write_leo_pickles(tmp_path, "test", *written["val"])  # the val classes again
    with pytest.raises(FewshotError, match="class n02000001 is in both val_embeddings.pkl and test_embeddings.pkl"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)
    with open(tmp_path / "test_embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": written["test"][0], "keys": written["test"][2], "labels": written["test"][1],
                     "payload": print}, f)  # anything but arrays and containers is refused
    with pytest.raises(FewshotError, match="cannot read .*test_embeddings.pkl"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)


def test_the_writer_refuses_mismatched_lengths(tmp_path):
    embeddings, labels, keys = synthetic_split("train")
    with pytest.raises(FewshotError, match="30 embeddings, 29 labels and 30 keys"):
        emb.write_leo_pickles(tmp_path, "train", embeddings, labels[:-1], keys)
    with pytest.raises(FewshotError, match="unknown split 'valid'"):
        emb.write_leo_pickles(tmp_path, "valid", embeddings, labels, keys)


@pytest.mark.parametrize("layout", ["crop folder", "dataset folder", "data path"])
def test_data_finds_leos_layout_and_samples_the_features_unchanged(tmp_path, layout):
    root = tmp_path / "embeddings"
    written = write_synthetic(root / "miniImageNet" / "center")
    spec = {"crop folder": root / "miniImageNet" / "center", "dataset folder": root / "miniImageNet",
            "data path": root}[layout]
    config = tiny_config(dataset="embeddings", data=str(spec), embedding_dim=16, embedding_crop="center",
                         embedding_dataset="miniImageNet", model="none", algorithm="leo")
    dataset, refs = data.load(config, progress=False)
    assert len(refs["train"]) == 5 and len(refs["val"]) == 3 and len(refs["test"]) == 3
    sampler = data.sampler(config, dataset, refs, "train", seed=0)
    task = sampler.batch(0, 1)[0]
    assert task.support_x.dtype == torch.float32 and task.support_x.shape == (3, 16)
    assert task.query_x.shape == (6, 16)
    rows = {tuple(r) for r in written["train"][0]}
    assert all(tuple(x) in rows for x in torch.cat([task.support_x, task.query_x]).numpy())  # no /255, no scaling
    # the same data at another dimension is refused with the file's name
    with pytest.raises(FewshotError, match=r"train_embeddings\.pkl: embeddings have dimension 16, expected 640"):
        data.load(config.unchecked_replace(embedding_dim=640), progress=False)


# --- fewshot embed ------------------------------------------------------------------

def image_dataset(folder, test_value=None, val_classes=2):
    """A 16x16 gray dataset of 4 train, 2 (`val_classes`) val and 2 test classes (8 images each),
    groups = splits; `test_value` overwrites every val and test pixel."""
    from fewshot.data.images import ImageClass, write_dataset
    rng = np.random.default_rng(0)
    groups = ["train"] * 4 + ["val"] * val_classes + ["test"] * 2
    images = rng.integers(0, 256, size=(len(groups) * 8, 1, 16, 16), dtype=np.uint8)
    classes = [ImageClass(f"class_{c}/x-y", g, c * 8, 8, {}) for c, g in enumerate(groups)]
    if test_value is not None:
        images[4 * 8:] = test_value
    write_dataset(folder, images, classes, {"dataset": "folder", "invert": False, "channels": 1})
    return str(folder)


def embed_config(data_dir):
    return tiny_config(dataset="folder", data=data_dir, image_size=16, channels=1, filters=4)


def test_embed_pretrains_on_train_classes_only_resumes_and_writes_leos_files(tmp_path):
    from fewshot import checkpoint
    from fewshot.embed import embed
    config = embed_config(image_dataset(tmp_path / "images"))
    full = embed(config, tmp_path / "full", steps=3, batch_size=8, progress=False)
    assert not full["stopped"] and full["dim"] == 4 and len(full["files"]) == 6
    part = embed(config, tmp_path / "part", steps=3, batch_size=8, progress=False, stop_after=2)
    assert part["stopped"] and part["steps"] == 2
    embed(config, tmp_path / "part", steps=3, batch_size=8, progress=False)
    a = checkpoint.load(tmp_path / "full" / "pretrain.pt")["model"]
    b = checkpoint.load(tmp_path / "part" / "pretrain.pt")["model"]
    assert a["head.weight"].shape[0] == 4  # one output per meta-train class
    from fewshot.runs import read_metrics
    for run in ("full", "part"):  # a pretraining log row at the last step, none repeated by the resume
        rows = read_metrics(tmp_path / run)
        assert [r["step"] for r in rows][-1] == 3 and 0 <= rows[-1]["metric"] <= 1
    assert [r["step"] for r in read_metrics(tmp_path / "part")] == [3]
    assert all(torch.equal(a[n], b[n]) for n in a)
    # val and test images never reach pretraining: other pixels there, the same backbone
    other = embed(embed_config(image_dataset(tmp_path / "other", test_value=7)), tmp_path / "other-out", steps=3,
                  batch_size=8, progress=False)
    c = checkpoint.load(tmp_path / "other-out" / "pretrain.pt")["model"]
    assert all(torch.equal(a[n], c[n]) for n in a) and other["dim"] == 4
    # the files are LEO's format, and fewshot reads them as the `embeddings` dataset
    for crop in ("center", "multiview"):
        leo = tiny_config(dataset="embeddings", data=str(tmp_path / "full"), embedding_dim=4, embedding_crop=crop)
        dataset, refs = data.load(leo, progress=False)
        assert [len(refs[s]) for s in emb.SPLITS] == [4, 2, 2] and dataset.images.shape == (64, 4)
        assert refs["train"][0].name == "class.0.x.y"
    center = read_features(data.resolve(leo.unchecked_replace(embedding_crop="center"), progress=False), 4).images
    multiview = read_features(data.resolve(leo, progress=False), 4).images
    assert not np.allclose(center, multiview)


def test_embed_command_writes_center_embeddings_of_the_pretrained_backbone(tmp_path, capsys):
    import yaml
    from fewshot import checkpoint, models
    from fewshot.cli import main
    from fewshot.data.episodes import to_float
    from fewshot.data.images import read_dataset
    data_dir = image_dataset(tmp_path / "images")
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({"dataset": "folder", "image_size": 16, "channels": 1, "filters": 4}))
    assert main(["embed", str(preset), "--data", data_dir, "--out", str(tmp_path / "out"), "--pretrain-steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert "--set embedding_dim=4" in capsys.readouterr().out
    state = checkpoint.load(tmp_path / "out" / "pretrain.pt")
    model = models.build(state["config"])
    model.load_state_dict(state["model"])
    model.eval()
    images = read_dataset(data_dir, 16).images
    with open(tmp_path / "out" / "center" / "val_embeddings.pkl", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    with torch.no_grad():
        expected = model.features(dict(model.named_parameters()), to_float(np.array(images[32:48])), bn_training=False)
    np.testing.assert_allclose(raw["embeddings"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert raw["keys"][0] == "0-class.4.x.y-class.4.x.y_00000" and raw["labels"].tolist() == [0] * 8 + [1] * 8


def test_embed_stops_at_its_time_limit_saved_and_the_same_command_finishes_it(tmp_path, capsys):
    import yaml
    from fewshot import checkpoint
    from fewshot.cli import main
    data_dir = image_dataset(tmp_path / "images")
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({"dataset": "folder", "image_size": 16, "channels": 1, "filters": 4}))
    argv = ["embed", str(preset), "--data", data_dir, "--pretrain-steps", "3", "--batch-size", "8", "--no-progress",
            "--crops", "center"]
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "out"), "--time-limit", "0.000001"]) == 0  # stops after one step
    out = capsys.readouterr().out
    assert "stopped at pretraining step 1 (the time limit of 1e-06 minutes), saved; run the same command again" in out
    assert checkpoint.load(tmp_path / "out" / "pretrain.pt")["step"] == 1
    assert not (tmp_path / "out" / "center").exists()
    assert main(argv + ["--out", str(tmp_path / "out")]) == 0
    a = checkpoint.load(tmp_path / "whole" / "pretrain.pt")
    b = checkpoint.load(tmp_path / "out" / "pretrain.pt")
    assert a["step"] == b["step"] == 3 and all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])


def test_a_pretraining_saved_with_the_absolute_data_path_resumes(tmp_path, monkeypatch):
    """pretrain.pt files from before the home folder was written ~ still continue."""
    from fewshot import checkpoint
    from fewshot.embed import embed
    monkeypatch.setenv("HOME", str(tmp_path))
    config = embed_config(image_dataset(tmp_path / "images"))
    embed(config, tmp_path / "out", steps=3, batch_size=8, progress=False, stop_after=1, crops=("center",))
    state = checkpoint.load(tmp_path / "out" / "pretrain.pt")
    assert state["options"]["data"] == "~/images"
    state["options"]["data"] = str(tmp_path / "images")  # as written before
    checkpoint.save(tmp_path / "out" / "pretrain.pt", **state)
    assert not embed(config, tmp_path / "out", steps=3, batch_size=8, progress=False, crops=("center",))["stopped"]


def test_embed_with_a_resnet12_backbone_writes_its_features(tmp_path, capsys):
    from fewshot import checkpoint, models
    from fewshot.cli import main
    data_dir = image_dataset(tmp_path / "images")
    preset = tmp_path / "tiny.yaml"
    preset.write_text("dataset: folder\nimage_size: 16\nchannels: 1\nwidths: [4, 4, 6, 8]\n")
    assert main(["embed", str(preset), "--backbone", "resnet12", "--data", data_dir, "--out", str(tmp_path / "out"),
                 "--pretrain-steps", "2", "--batch-size", "8", "--threads", "1", "--no-progress"]) == 0
    assert "--set embedding_dim=8" in capsys.readouterr().out  # the last width: global average pool
    state = checkpoint.load(tmp_path / "out" / "pretrain.pt")
    assert state["config"].model == "resnet12" and isinstance(models.build(state["config"]),
                                                                   models.resnet.ResNet12)
    with open(tmp_path / "out" / "multiview" / "test_embeddings.pkl", "rb") as f:
        assert pickle.load(f, encoding="latin1")["embeddings"].shape == (16, 8)
    # a second run with another backbone in the same folder is refused, not mixed
    code = main(["embed", str(preset), "--data", data_dir, "--out", str(tmp_path / "out"), "--pretrain-steps", "2",
                 "--batch-size", "8", "--no-progress"])
    assert code == 2 and "model" in capsys.readouterr().err


def test_embed_writes_only_the_crops_asked_for_and_adds_the_others_later(tmp_path, capsys):
    import json
    from fewshot.cli import main
    from helpers import one_error_line
    data_dir = image_dataset(tmp_path / "images")
    preset = tmp_path / "tiny.yaml"
    preset.write_text("dataset: folder\nimage_size: 16\nchannels: 1\nfilters: 4\n")
    argv = ["embed", str(preset), "--data", data_dir, "--out", str(tmp_path / "out"), "--pretrain-steps", "2",
            "--batch-size", "8", "--no-progress"]
    assert main(argv + ["--crops", "center"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["center"]
    assert json.loads((tmp_path / "out" / "embed.json").read_text())["crops"] == ["center"]
    center = (tmp_path / "out" / "center" / "test_embeddings.pkl").read_bytes()
    assert main(argv + ["--crops", "multiview"]) == 0  # the same backbone, no more pretraining
    assert json.loads((tmp_path / "out" / "embed.json").read_text())["crops"] == ["center", "multiview"]
    assert (tmp_path / "out" / "center" / "test_embeddings.pkl").read_bytes() == center
    capsys.readouterr()
    assert main(argv + ["--crops", "centre"]) == 2
    assert "--crops takes center and/or multiview, got centre" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_refused_when_read_and_never_written(tmp_path, value):
    written = write_synthetic(tmp_path)
    embeddings, labels, keys = written["train"]
    bad = embeddings.copy()
    bad[7, 3] = value
    with pytest.raises(FewshotError, match=r"1 embeddings hold NaN or infinite values.*nothing was written"):
        emb.write_leo_pickles(tmp_path, "train", bad, labels, keys)
    assert np.array_equal(emb.read_pickle(tmp_path / "train_embeddings.pkl", 16)[0], embeddings)  # unchanged
    with open(tmp_path / "train_embeddings.pkl", "wb") as f:
        pickle.dump({"embeddings": bad, "labels": labels, "keys": np.array(keys)}, f)
    with pytest.raises(FewshotError, match=r"train_embeddings\.pkl: 1 of 30 embeddings hold NaN or infinite "
                                           r"values \(first row 7\)"):
        emb.import_embeddings(tmp_path, tmp_path / "cache", size=16, progress=False)
    assert not is_prepared(tmp_path / "cache")


def test_embed_pretrains_only_backbones_that_read_the_head_and_batch_norm_it_sets(tmp_path):
    from fewshot.embed import embed, pretrainable
    assert pretrainable() == ["conv4", "resnet12", "wrn28_10"]  # their `reads`, not a list in embed.py
    with pytest.raises(FewshotError, match=r"^fewshot embed pretrains one of conv4, resnet12, wrn28_10; the preset's "
                                           r"model is 'mlp' \(choose one with --backbone\)$"):
        embed(embed_config(str(tmp_path / "images")).unchecked_replace(model="mlp"), tmp_path / "out", steps=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["fp32", "tf32", "bf16"])
def test_embed_runs_in_the_presets_precision_as_training_does(tmp_path, monkeypatch, value):
    """Pretraining steps as `fewshot train`'s meta-steps (the flags, and bf16's autocast),
    the embedding pass as validation (the flags only); the caller's flags back afterwards."""
    from fewshot.embed import embed
    from fewshot.models.conv4 import Conv4
    from helpers import configure_as_on_cuda, tf32_flags
    seen, real_forward = set(), Conv4.forward

    def spying_forward(self, *args, **kwargs):
        if args[0].device.type != "meta":  # memory.check_batch sizes the network on the meta device first
            seen.add((*tf32_flags(), torch.is_autocast_enabled("cpu"), "pretraining" if self.training else "embedding"))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(Conv4, "forward", spying_forward)
    tf32 = value == "tf32"
    with configure_as_on_cuda(monkeypatch, (not tf32,) * 2):
        config = embed_config(image_dataset(tmp_path / "images")).unchecked_replace(precision=value)
        embed(config, tmp_path / "out", steps=2, batch_size=8, progress=False, crops=("center",))
        assert seen == {(tf32, tf32, value == "bf16", "pretraining"), (tf32, tf32, False, "embedding")}
        assert tf32_flags() == (not tf32,) * 2


def test_pretraining_validates_the_features_and_embeds_with_the_best_weights(tmp_path):
    """Every val_every steps: nearest-prototype accuracy of the features on the validation
    classes, in the log; the best weights kept and embedded; the pretraining itself the same
    as without validation, also when stopped and resumed."""
    from fewshot import checkpoint, models
    from fewshot.data.episodes import to_float
    from fewshot.data.images import read_dataset
    from fewshot.embed import embed
    from fewshot.runs import read_metrics
    data_dir = image_dataset(tmp_path / "images", val_classes=4)
    config = embed_config(data_dir)  # 3-way 1-shot, 2 queries
    common = dict(steps=6, batch_size=8, progress=False, crops=("center",))
    result = embed(config, tmp_path / "validated", val_every=2, **common)
    plain = embed(config, tmp_path / "plain", val_every=0, **common)
    rows = {r["step"]: r for r in read_metrics(tmp_path / "validated")}
    scores = {step: rows[step]["val_metric"] for step in (2, 4, 6)}
    assert all(0 <= value <= 1 for value in scores.values()) and "val_metric" not in read_metrics(tmp_path / "plain")[-1]
    best_step = max(scores, key=lambda step: (scores[step], -step))  # the first of the best
    best = checkpoint.load(tmp_path / "validated" / "pretrain-best.pt")
    assert best["step"] == result["embedded_step"] == best_step and best["val_metric"] == scores[best_step]
    summary = json.loads((tmp_path / "validated" / "embed.json").read_text())
    assert summary["embedded_step"] == best_step and summary["pretrain_steps"] == 6 and plain["embedded_step"] == 6
    last, unvalidated = (checkpoint.load(tmp_path / name / "pretrain.pt")["model"] for name in ("validated", "plain"))
    assert all(torch.equal(last[n], unvalidated[n]) for n in last)
    model = models.build(best["config"])
    model.load_state_dict(best["model"])
    model.eval()
    with torch.no_grad():
        expected = model.features(dict(model.named_parameters()), to_float(np.array(read_dataset(data_dir, 16)
                                                                                    .images[32:64])), bn_training=False)
    with open(tmp_path / "validated" / "center" / "val_embeddings.pkl", "rb") as f:
        np.testing.assert_allclose(pickle.load(f, encoding="latin1")["embeddings"], expected.numpy(), rtol=1e-5,
                                   atol=1e-6)
    # the weights that made the files are the best ones, also in a copy of the files with embed.json
    from fewshot.embed import embedding_weights
    assert embedding_weights(tmp_path / "validated") == tmp_path / "validated" / "pretrain-best.pt"
    assert embedding_weights(tmp_path / "plain") == tmp_path / "plain" / "pretrain.pt"
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("embed.json", "pretrain.pt"):
        shutil.copy(tmp_path / "validated" / name, copy / name)
    assert best_step < 6 and embedding_weights(copy) is None  # pretrain.pt alone holds later weights
    shutil.copy(tmp_path / "validated" / "pretrain-best.pt", copy / "pretrain-best.pt")
    assert embedding_weights(copy) == copy / "pretrain-best.pt"
    (copy / "embed.json").write_text("[not what fewshot writes")
    assert embedding_weights(copy) == copy / "pretrain.pt"  # read as a folder from before the record
    # without its best weights the folder says so; without validation it embeds the last weights
    shutil.copytree(tmp_path / "validated", tmp_path / "lost", ignore=shutil.ignore_patterns("center", "embed.json"))
    (tmp_path / "lost" / "pretrain-best.pt").unlink()
    with pytest.raises(FewshotError, match=r"pretrain-best.pt, the best weights by validation \(pretraining step "
                                           r"\d\), is missing; restore it, or pass --val-every 0"):
        embed(config, tmp_path / "lost", val_every=2, **common)
    assert embed(config, tmp_path / "lost", val_every=0, **common)["embedded_step"] == 6
    embed(config, tmp_path / "resumed", val_every=2, stop_after=3, **common)
    assert embed(config, tmp_path / "resumed", val_every=2, **common)["embedded_step"] == best_step
    assert [r.get("val_metric") for r in read_metrics(tmp_path / "resumed")] == \
        [r.get("val_metric") for r in read_metrics(tmp_path / "validated")]


def test_validation_tasks_the_val_split_cannot_give_are_refused_before_pretraining(tmp_path):
    from fewshot.embed import embed
    config = embed_config(image_dataset(tmp_path / "images"))  # 2 val classes for 3-way tasks
    with pytest.raises(FewshotError, match=r"3-way 1-shot tasks with 2 queries, but the val split has 2 classes "
                                           r"of 3 images or more; pass --val-every 0"):
        embed(config, tmp_path / "out", steps=4, val_every=2, progress=False)
    assert not (tmp_path / "out" / "pretrain.pt").exists()


def test_prototype_accuracy_is_one_on_separated_classes_and_chance_on_identical_features():
    from fewshot.embed import prototype_accuracy
    classes = np.repeat(np.arange(6), 5)
    separated = np.eye(6)[classes] * 10 + np.random.default_rng(0).normal(0, 0.1, (30, 6))
    assert prototype_accuracy(separated, classes, 4, 1, 3, 50, seed=1) == (1.0, 0.0)
    same = np.ones((30, 6))  # every distance ties: the first prototype wins, 1 query class in 4 is right
    assert prototype_accuracy(same, classes, 4, 1, 3, 50, seed=1) == (0.25, 0.0)
    noisy = np.random.default_rng(2).normal(0, 1, (30, 6)) + np.eye(6)[classes]
    first = prototype_accuracy(noisy, classes, 4, 1, 3, 50, seed=1)
    assert first == prototype_accuracy(noisy, classes, 4, 1, 3, 50, seed=1) and first[1] > 0
    assert first != prototype_accuracy(noisy, classes, 4, 1, 3, 50, seed=2)
