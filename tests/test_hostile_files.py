"""Hostile files, round two (issue 23): every file fewshot reads or writes, as a careless or
hostile user gives it. Images Pillow cannot decode or convert, sprite sheets, preset files,
numbers, YAML bombs, checkpoints and metrics files with wrong types, pickles, outputs that
are devices, pipes or links, files that belong to something else, and worker errors of
multi-process runs.

The table runs as tests/test_hostile.py's does (its `world`, `in_process`, `snapshot`):
for every case the exit status, no traceback, one `fewshot: error:` line naming the
problem, the sha256 of every file that existed before unchanged, nothing left behind.
"""
import io
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot import checkpoint
from fewshot.config import load_preset, parse_overrides, validate
from fewshot.data.embeddings import make_key, write_leo_pickles
from fewshot.data.images import ImageClass, write_dataset
from fewshot.errors import FewshotError
from fewshot.reading import YAML_VALUES, max_pixels
from fewshot.train import train

from test_hostile import environment, image_tree, in_process, png, snapshot, subprocess_run, world  # noqa: F401

BOMB = "[" + ",".join(f"&a{i} [" + ",".join([f"*a{i - 1}" if i else "1"] * 10) + "]" for i in range(9)) + "]"


def bomb_png(path, width, height):
    """A PNG whose header says width x height: what a decompression bomb shows before it is decoded."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its checksum
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def broken_png(size=300, seed=3):
    """PNG bytes whose second IDAT chunk has a damaged type: Pillow raises SyntaxError('broken PNG file')."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    second = data.index(b"IDAT", data.index(b"IDAT") + 4)
    return data[:second] + b"\0DAT" + data[second + 4:]


def lab_tiff(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert("RGB").save(path.with_suffix(".png"))
    Image.frombytes("LAB", (30, 30), pixels.tobytes()).save(path)
    path.with_suffix(".png").unlink()


def sprites(root, sheet_height=None, line="background,Alpha,character01,1,0,2"):
    """The 28x28 sprite form: index.csv and one sheet (2 drawers, `sheet_height` pixels tall)."""
    (root / "images_background").mkdir(parents=True)
    (root / "index.csv").write_text(f"set,alphabet,character,char_id,row,drawers\n{line}\n")
    Image.new("L", (56, sheet_height or 28), 255).save(root / "images_background" / "Alpha.png")


@pytest.fixture(scope="module")
def files(world):
    """Adds the hostile files of this module to test_hostile's world (its own copy, built for this module)."""
    root, home = world["root"], world["home"]
    run = root / "run"
    # images
    (root / "broken.png").write_bytes(broken_png())
    bomb_png(root / "bomb.png", 20000, 20000)
    bomb_png(root / "bomb-100m.png", 10000, 10000)  # under Pillow's own error, over its limit: refused by size
    lab_tiff(root / "lab.tif", seed=1)
    for name, write in (("brokentree", lambda p: p.write_bytes(broken_png())),
                        ("bombtree", lambda p: bomb_png(p, 20000, 20000))):
        image_tree(root / name, splits=(("train", 2), ("val", 2), ("test", 2)), per_class=2, prefix=name[:4])
        target = sorted((root / name / "train").iterdir())[0] / "1.png"
        write(target)
    for split, classes in (("train", 3), ("val", 2), ("test", 2)):
        for c in range(classes):
            for i in range(2):
                lab_tiff(root / "labtree" / split / f"l{split}{c}" / f"{i}.tif", seed=100 * c + i + len(split))
    with zipfile.ZipFile(root / "brokenpng.zip", "w") as z:
        z.writestr("images_background/Alpha/character01/0101_01.png", broken_png())
    with zipfile.ZipFile(root / "bombpng.zip", "w") as z:
        bomb_png(root / "scratch.png", 20000, 20000)
        z.writestr("images_background/Alpha/character01/0101_01.png", (root / "scratch.png").read_bytes())
    (root / "scratch.png").unlink()
    sprites(root / "sprites-uneven", sheet_height=38)
    sprites(root / "sprites-short-line", line="background,Alpha,character01,1")
    sprites(root / "sprites-bomb")
    bomb_png(root / "sprites-bomb" / "images_background" / "Alpha.png", 20000, 20000)
    # preset files
    (root / "intkey.yaml").write_text("steps: 2\n1: 3\n")
    (root / "nullkey.yaml").write_text("steps: 2\n~: 3\n")
    (root / "latin1.yaml").write_bytes(b"description: caf\xe9\nsteps: 2\n")
    (root / "bomb.yaml").write_text(f"hidden: {BOMB}\n")
    (root / "scientific.yaml").write_text("meta_lr: 1e-4\ninner_lr: 2.5E-1\nsteps: 2\nfilters: 4\n")
    # checkpoints: a config with a string where a number belongs; embed's pretraining
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["ways"] = "five"
    torch.save(state, root / "badtypes.pt")
    state["config"]["ways"] = 5
    state["config"]["image_size"] = [28]
    torch.save(state, root / "badlist.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "model": {"w": torch.zeros(2)}, "optimizer": {},
                "rng": torch.get_rng_state(), "step": 1, "options": {"preset": "omniglot-5w1s"},
                "config": dict(state["config"])}, root / "pretrain.pt")
    # metrics files: a row missing a field, null and text where numbers belong
    for name, rows in (("nofield", [{"step": 1, "loss": 1.0, "metric": 0.5}, {"step": 2, "metric": 0.6}]),
                       ("nulls", [{"step": 1, "loss": 1.0, "metric": 0.5}, {"step": 2, "loss": None, "metric": 0.6}]),
                       ("texts", [{"step": 1, "loss": 1.0, "metric": 0.5}, {"step": 2, "loss": 0.9, "metric": "high"},
                                  {"step": 3, "loss": 0.8, "metric": 0.7, "val_metric": "n/a", "val_ci95": 0.1}]),
                       ("allbad", [{"step": "one", "loss": 1.0}, {"step": 2, "loss": "x", "metric": 0.1}])):
        shutil.copytree(run, root / name, ignore=shutil.ignore_patterns(".lock", "curves.png"))
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # pickles
    ragged = root / "ragged"
    for n, split in enumerate(("train", "val", "test")):
        labels = np.repeat(np.arange(6), 2)
        keys = [make_key(f"{split}{c}", f"{i:03d}", prefix=i) for i, c in enumerate(labels)]
        write_leo_pickles(ragged, split, np.random.default_rng(n).normal(size=(12, 4)), labels, keys)
    with open(ragged / "train_embeddings.pkl", "wb") as f:
        rows = [list(range(4)) for _ in range(11)] + [[1.0, 2.0]]
        pickle.dump({"embeddings": rows, "labels": labels, "keys": np.asarray(keys)}, f, protocol=2)
    images = np.zeros((4, 84, 84, 3), np.uint8)
    for name, class_dict in (("mini-string-rows", {"n01000001": ["first", "second"]}),
                             ("mini-list-map", [["n01000001", [0, 1]]])):
        (root / name).mkdir()
        for split in ("train", "validation", "test"):
            with open(root / name / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    (root / "mini-ragged-images").mkdir()
    for split in ("train", "validation", "test"):
        with open(root / "mini-ragged-images" / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": [np.zeros((84, 84, 3), np.uint8), np.zeros((4, 4), np.uint8)],
                         "class_dict": {"n01000001": [0, 1]}}, f)
    # a raw dataset's own file, a user's notes, a scores file of an earlier eval
    shutil.copytree(root / "sprites-uneven", root / "rawsprites")
    (root / "scores-of-mine.txt").write_text("my notes, not scores\n")
    # a prepared dataset of another kind (Omniglot's, 1 channel) and one of miniImageNet's (3 channels, 84x84)
    write_dataset(root / "omni-ds", np.full((80, 1, 28, 28), 200, np.uint8),
                  [ImageClass(f"a/c{c}", "background" if c < 30 else "evaluation", 2 * c, 2, {"char_id": c + 1})
                   for c in range(40)], {"dataset": "omniglot", "invert": True, "channels": 1})
    write_dataset(root / "mini-ds", np.full((32, 3, 84, 84), 90, np.uint8),
                  [ImageClass(f"n0{c:07d}", ("train", "val", "test")[min(c // 6, 2)], 2 * c, 2, {})
                   for c in range(16)], {"dataset": "miniimagenet", "invert": False, "channels": 3})
    # the user's image tree prepared at another size: eval at the run's 28 must not write into it
    code, _, err = in_process(["data", "folder", "--from", "imgs", "--root", ".", "--name", "mine20", "--size", "20",
                               "--no-progress"], root, home)
    assert code == 0, err
    # a run whose data is gone: a resume that extends it fails, and must leave config.yaml as it was
    shutil.copytree(run, root / "nodata", ignore=shutil.ignore_patterns(".lock"))
    text = (root / "nodata" / "config.yaml").read_text()
    (root / "nodata" / "config.yaml").write_text(text.replace("data: ", "data: gone-", 1))
    return world


@dataclass
class Case:
    id: str
    argv: str | list           # a string is split on spaces; {root} is filled in
    code: int
    message: str               # a substring of stderr (exit != 0) or stdout (exit 0), case-insensitive
    sub: bool = False
    creates: list = field(default_factory=list)
    also: str = ""             # a second substring the output must hold


TRAIN = "train omniglot-5w1s --data mine --out fresh --no-progress --set steps=2 --set filters=4 --threads 1"
PROCS = (f"{TRAIN} --set meta_batch=2 --set ways=3 --set query=2 --set val_tasks=2 "
         f"--procs 2")
CASES = [
    # --- images Pillow cannot decode or convert ---------------------------------------------------------
    Case("zip-broken-png", "data omniglot --from brokenpng.zip --name z --no-progress", 2, "cannot read image",
         also="brokenpng.zip:images_background"),
    Case("zip-bomb-png", "data omniglot --from bombpng.zip --name z --no-progress", 2, "decompression bomb",
         also="89,478,485"),
    Case("folder-broken-png", "data folder --from brokentree --name b --no-progress", 2, "cannot read image",
         also="broken png file"),
    Case("folder-bomb", "data folder --from bombtree --name b --no-progress", 2, "400,000,000 pixels",
         also="not decoded"),
    Case("folder-lab-gray", "data folder --from labtree --name lab --channels 1 --no-progress", 0,
         "prepared 7 classes", creates=["home/lab"]),
    Case("folder-lab-colour", "data folder --from labtree --name lab3 --no-progress", 0, "prepared 7 classes",
         creates=["home/lab3"]),
    Case("sprites-bomb", "data omniglot --from sprites-bomb --name s --no-progress", 2, "decompression bomb"),
    Case("sprites-uneven-height", "data omniglot --from sprites-uneven --name s --no-progress", 2,
         "not a whole number of 28x28 tiles"),
    Case("sprites-short-line", "data omniglot --from sprites-short-line --name s --no-progress", 2,
         "line 2 of", also="index.csv"),
    Case("predict-broken-png", "predict run --support support --query broken.png", 2, "cannot read image broken.png"),
    Case("predict-bomb", "predict run --support support --query bomb.png", 2, "decompression bomb"),
    Case("predict-bomb-by-size", "predict run --support support --query bomb-100m.png", 2,
         "10000x10000 = 100,000,000 pixels"),
    Case("predict-lab", "predict run --support support --query lab.tif", 0, "lab.tif"),
    # --- preset files and --set ---------------------------------------------------------------------
    Case("preset-int-key", "summary intkey.yaml", 2, "has a key 1 that is not a name"),
    Case("preset-null-key", f"{TRAIN.replace('omniglot-5w1s', 'nullkey.yaml')}", 2, "has a key None"),
    Case("preset-not-utf8", "summary latin1.yaml", 2, "cannot read preset file latin1.yaml",
         also="utf-8"),
    Case("preset-alias-bomb", "summary bomb.yaml", 2, "yaml bomb", also=f"{YAML_VALUES:,}"),
    Case("set-alias-bomb", ["summary", "omniglot-5w1s", "--set", f"hidden={BOMB}"], 2, "yaml bomb"),
    Case("set-scientific", "summary omniglot-5w1s --set meta_lr=1e-4 --set inner_lr=5E-1", 0, "total"),
    Case("preset-scientific", "summary scientific.yaml", 0, "total"),
    Case("set-seed-overflow", f"{TRAIN} --set seed=18446744073709551616", 2, "seed must be a whole number",
         also="<= 9223372036854775807"),
    Case("set-huge-number-is-cut", ["summary", "omniglot-5w1s", "--set", "steps=" + "9" * 4000], 2,
         "steps must be a whole number", also="..."),
    Case("set-number-too-long-to-read", ["summary", "omniglot-5w1s", "--set", "steps=" + "9" * 5000], 2,
         "is not a value yaml can read", also="4300 digits"),
    Case("set-huge-key-is-cut", ["summary", "omniglot-5w1s", "--set", "x" * 5000 + "=1"], 2, "unknown config key"),
    # --- sizes the machine cannot hold, refused before anything is allocated or written -----------------
    Case("summary-image-size-20000", "summary omniglot-5w1s --set image_size=20000", 2,
         "image_size must be a whole number >= 1 and <= 1024"),
    Case("summary-filters-huge", "summary omniglot-5w1s --set filters=100000000", 2, "filters must be"),
    Case("summary-ways-huge", "summary omniglot-5w1s --set ways=1000000000", 2, "ways must be"),
    Case("summary-widths-huge", "summary omniglot-5w1s --set model=resnet12 --set widths=[64,160,320,99999999]", 2,
         "widths must be a list"),
    Case("summary-large-allocates-nothing", "summary omniglot-5w1s --set ways=100000 --set shots=10000", 0,
         "(1000000000, 100000)"),
    Case("train-network-too-large", f"{TRAIN} --set filters=2048 --set image_size=1024", 2, "needs",
         also="GB at least"),
    Case("embed-batch-huge", "embed omniglot-5w1s --data mine --out emb --batch-size 100000000 --set filters=4", 2,
         "--batch-size 100000000", also="GB at least"),
    # --- checkpoints -------------------------------------------------------------------------------------
    Case("eval-config-wrong-type", "eval badtypes.pt --tasks 2 --no-progress", 2, "damaged fewshot checkpoint",
         also="ways must be a whole number"),
    Case("predict-config-wrong-type", "predict badtypes.pt --support support --query query", 2,
         "damaged fewshot checkpoint"),
    Case("eval-config-list-size", "eval badlist.pt --tasks 2 --no-progress", 2, "image_size must be"),
    Case("predict-pretrain-pt", "predict pretrain.pt --support support --query query", 2,
         "fewshot embed`'s pretraining"),
    Case("eval-pretrain-pt", "eval pretrain.pt", 2, "not a meta-trained run"),
    # --- metrics files -----------------------------------------------------------------------------------
    Case("plot-row-missing-loss", "plot nofield", 0, "wrote", creates=["nofield/curves.png"]),
    Case("plot-null-loss", "plot nulls", 0, "wrote", creates=["nulls/curves.png"]),
    Case("plot-text-metric", "plot texts", 0, "wrote", creates=["texts/curves.png"]),
    Case("plot-no-good-row", "plot allbad", 2, "holds no metrics row (2 lines are torn"),
    # --- pickles -----------------------------------------------------------------------------------------
    Case("leo-ragged-embeddings", "train leo-omniglot-5w1s --data ragged --out leo --set embedding_dim=4 "
         "--no-progress", 2, "train_embeddings.pkl", also="inhomogeneous"),
    Case("mini-string-rows", "data miniimagenet --from mini-string-rows --name m --no-progress", 2,
         "class 'n01000001' in", also="first"),
    Case("mini-class-map-list", "data miniimagenet --from mini-list-map --name m --no-progress", 2,
         "class_dict is a list"),
    Case("mini-ragged-images", "data miniimagenet --from mini-ragged-images --name m --no-progress", 2,
         "the image_data of"),
    # --- outputs -----------------------------------------------------------------------------------------
    Case("predict-csv-raw-index", "predict run --support support --query query --csv rawsprites/index.csv", 2,
         "is not a file --csv writes"),
    Case("eval-scores-users-notes", "eval run --scores scores-of-mine.txt --tasks 2", 2,
         "is not a file --scores writes"),
    # --- files that belong to something else ---------------------------------------------------------------
    Case("eval-on-another-kind", "eval run --data omni-ds --tasks 2 --no-progress", 2, "holds omniglot data",
         also="--any-kind"),
    Case("eval-on-miniimagenet", "eval run --data mini-ds --tasks 2 --no-progress", 2, "holds miniimagenet data"),
    Case("eval-on-another-kind-asked", "eval run --data omni-ds --any-kind --tasks 2 --no-progress", 0, "accuracy"),
    Case("eval-other-size-decodes-into-a-cache", "eval run --data mine20 --tasks 2 --no-progress", 0, "accuracy",
         creates=["home/cache"]),
    Case("resume-steps-failing-keeps-config", "train --resume nodata --steps 7 --no-progress", 2,
         "neither a folder nor a dataset"),
    # --- worker errors of a multi-process run are one process's --------------------------------------------
    Case("procs-above-meta-batch", f"{TRAIN} --set meta_batch=2 --procs 3", 2, "--procs 3 splits a meta-batch of 2"),
    Case("procs-tasks-do-not-fit", f"{PROCS} --set query=30", 2, "need 31 images per class", also="fix:"),
    Case("procs-non-finite-loss", f"{PROCS} --set inner_lr=1e30", 2, "became non-finite at step 1",
         sub=True),
]


def test_the_table_has_distinct_cases():
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file_case(files, case):
    root, home = files["root"], files["home"]
    argv = case.argv.split() if isinstance(case.argv, str) else list(case.argv)
    argv = [a.format(root=root) for a in argv]
    before_files, before_folders = snapshot(root)
    code, out, err = (subprocess_run if case.sub else in_process)(argv, root, home)
    after_files, after_folders = snapshot(root)
    shown = f"exit {code}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    assert "Traceback" not in out + err, shown
    assert code == case.code, shown
    said = (out if code == 0 else err).lower()
    assert case.message.lower() in said and case.also.lower() in said, shown
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fewshot: error: ") and len(lines[0]) < 1000, shown
    changed = sorted(p for p, digest in before_files.items() if after_files.get(p) != digest)
    assert not changed, f"changed or removed: {changed}\n{shown}"
    allowed = [str(root / c) for c in case.creates]
    new = sorted(p for p in (set(after_files) - set(before_files)) | (after_folders - before_folders)
                 if not any(p == a or p.startswith(a + os.sep) for a in allowed))
    assert not new, f"left behind: {new}\n{shown}"


# --- outputs that are not regular files -------------------------------------------------------------------
# Never the machine's own /dev/null or /dev/stdout: code that replaced them (the bug of issue 23) would break
# them for every program. A terminal device of our own, a link of our own to /proc/self/fd/1 (what /dev/stdout
# is), a block device node of our own.

def test_eval_scores_to_a_character_device_writes_through_it(files):
    master, slave = os.openpty()  # the terminal's device: a character device, as /dev/null is
    try:
        device = os.ttyname(slave)
        before = os.stat(device)
        code, out, err = in_process(["eval", "run", "--scores", device, "--tasks", "2", "--no-progress"],
                                    files["root"], files["home"])
        assert code == 0, err
        after = os.stat(device)
        assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
        written = os.read(master, 4096).decode().split()
        assert len(written) == 2 and all(0 <= float(s) <= 1 for s in written)
    finally:
        os.close(master)
        os.close(slave)


def test_predict_csv_to_a_link_to_stdout_writes_through_the_pipe(files, tmp_path):
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")  # what /dev/stdout is
    code, out, err = subprocess_run(["predict", "run", "--support", "support", "--query", "query",
                                     "--csv", str(link)], files["root"], files["home"])
    assert code == 0 and "Traceback" not in err, err
    lines = out.splitlines()
    assert lines[0].startswith("file") and any(line.startswith("file,label,probability,p_") for line in lines), out
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1" and list(tmp_path.iterdir()) == [link]


def test_an_output_to_a_block_device_is_refused(files, tmp_path):
    device = tmp_path / "disk"
    try:
        os.mknod(device, 0o600 | stat.S_IFBLK, os.makedev(7, 250))  # a loop device number no one uses
    except OSError:
        pytest.skip("cannot make a device node here (needs root)")
    for argv in (["predict", "run", "--support", "support", "--query", "query", "--csv", str(device)],
                 ["eval", "run", "--scores", str(device), "--tasks", "2"], ["plot", "run", "--out", str(device)]):
        code, out, err = in_process(argv, files["root"], files["home"])
        assert code == 2 and err.startswith("fewshot: error: ") and "is a block device" in err, err
        assert stat.S_ISBLK(os.lstat(device).st_mode)


def test_plot_out_to_a_named_pipe_writes_through_it(files, tmp_path):
    fifo = tmp_path / "curves.png"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    code, out, err = in_process(["plot", "run", "--out", str(fifo)], files["root"], files["home"])
    reader.join(60)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the pipe
    assert received and received[0].startswith(b"\x89PNG") and list(tmp_path.iterdir()) == [fifo]


def test_an_output_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(files, tmp_path):
    target = tmp_path / "kept" / "scores.txt"
    target.parent.mkdir()
    target.write_text("0.5\n")
    link = tmp_path / "scores-link.txt"
    link.symlink_to(target)
    code, out, err = in_process(["eval", "run", "--scores", str(link), "--tasks", "3", "--no-progress"],
                                files["root"], files["home"])
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(target.read_text().splitlines()) == 3 and not list(target.parent.glob(".*"))


def test_a_failed_resume_that_extends_leaves_config_yaml_as_it_was(tmp_path, monkeypatch):
    from fewshot.algorithms.maml import MAML
    from helpers import tagged_dataset, tiny_config
    data = str(tagged_dataset(tmp_path / "data", classes=80))
    out = tmp_path / "run"
    train(tiny_config(data=data, steps=2), out, progress=False)
    config, last = (out / "config.yaml").read_bytes(), (out / "last.pt").read_bytes()
    real = MAML.meta_gradient

    def diverging(self, tasks, step=0):
        return {**real(self, tasks, step), "loss": torch.tensor(float("nan"))}
    monkeypatch.setattr(MAML, "meta_gradient", diverging)
    with pytest.raises(FewshotError, match="became non-finite at step 3"):
        train(out=out, resume=True, steps=7, progress=False)
    assert (out / "config.yaml").read_bytes() == config and (out / "last.pt").read_bytes() == last


# --- the same mappings from Python, and numbers -------------------------------------------------------------

@pytest.mark.parametrize("mapping,message", [({1: 2}, "has a key 1 that is not a name"),
                                             ({None: 2}, "has a key None"),
                                             ({"steps": 2, (1, 2): 3}, r"has a key \(1, 2\)")])
def test_a_mapping_given_to_train_from_python_is_refused_in_one_line(tmp_path, mapping, message):
    with pytest.raises(FewshotError, match=message):
        train(mapping, tmp_path / "run", progress=False)
    with pytest.raises(FewshotError, match=message):
        validate(mapping)
    assert not (tmp_path / "run").exists()


def test_ordinary_scientific_notation_is_a_number_in_set_and_presets(tmp_path):
    assert parse_overrides(["meta_lr=1e-4", "inner_lr=2.5E+1", "min_meta_lr=.5e-3", "kl_weight=1_0e-1"]) == {
        "meta_lr": 1e-4, "inner_lr": 25.0, "min_meta_lr": 5e-4, "kl_weight": 1.0}
    assert parse_overrides(["steps=12", "data=1e4x", "split=e5"]) == {"steps": 12, "data": "1e4x", "split": "e5"}
    (tmp_path / "p.yaml").write_text("meta_lr: 3e-5\nsteps: 10\n")
    assert load_preset(str(tmp_path / "p.yaml")).meta_lr == 3e-5
    with pytest.raises(FewshotError, match="steps must be a whole number"):
        validate({**load_preset("omniglot-5w1s").to_dict(), **parse_overrides(["steps=1e3"])})


def test_no_image_above_the_limit_is_decoded(files, monkeypatch):
    from PIL import ImageFile
    decoded = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real(self))
    from fewshot.data.folder import load_image
    for name in ("bomb.png", "bomb-100m.png"):
        with pytest.raises(FewshotError, match=f"more than {max_pixels():,}"):
            load_image(files["root"] / name, 28, 1)
    assert decoded == []
