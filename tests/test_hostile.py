"""Hostile input and faults, as a careless or unlucky user produces them (issue 13).

One table of cases, each a real `fewshot ...` command line run in a tmp world that
holds a tiny trained run, a prepared dataset, a user's image tree and a zoo of
damaged files. For every case: the exit status, no "Traceback", a message naming
the problem, the sha256 of every file that existed before unchanged, and no new
file or folder left behind (unless the case says what it makes).

Cases marked `sub` run as `python -m fewshot.cli` in a subprocess; the others call
`fewshot.cli.main(argv)` in this process with the output captured (the same code
path, without paying the torch import per case). Then: a full disk (a small tmpfs,
where this process may mount one), SIGTERM (twice) during training, umask, and the
content-keyed caches.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot import checkpoint, cli, data
from fewshot.config import apply_overrides, load_preset
from fewshot.data.embeddings import make_key, write_leo_pickles
from fewshot.data.images import read_dataset
from fewshot.errors import FewshotError
from fewshot.files import write_text

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--set", "steps=2", "--set", "filters=4", "--set", "meta_batch=2", "--set", "val_every=2",
        "--set", "val_tasks=2", "--set", "log_every=1", "--set", "save_every=2", "--threads", "1", "--no-progress"]


def png(path, seed, size=28):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)


def image_tree(root, splits=(("train", 6), ("val", 5), ("test", 5)), per_class=3, prefix="c"):
    """{train,val,test}/<class>/<n>.png of noise, class names unique across splits."""
    n = 0
    for split, classes in splits:
        for _ in range(classes):
            for i in range(per_class):
                png(root / split / f"{prefix}{n:02d}" / f"{i}.png", seed=100 * n + i)
            n += 1
    return root


def in_process(argv, cwd, home):
    """(exit status, stdout, stderr) of cli.main(argv) run here; an escaping exception is a
    bug and reads as Python would print it (status 1, a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_home = os.getcwd(), os.environ.get("FEWSHOT_HOME")
    os.chdir(cwd)
    os.environ["FEWSHOT_HOME"] = str(home)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as stop:  # argparse
                code = stop.code if isinstance(stop.code, int) else 2
            except BaseException:  # noqa: B902 - a bug: show it as the user would see it
                err.write(traceback.format_exc())
                code = 1
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("FEWSHOT_HOME", None)
        else:
            os.environ["FEWSHOT_HOME"] = old_home
    return code, out.getvalue(), err.getvalue()


def environment(home):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEWSHOT_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def subprocess_run(argv, cwd, home, timeout=300):
    done = subprocess.run([sys.executable, "-m", "fewshot.cli", *argv], cwd=cwd, env=environment(home),
                          capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


def snapshot(root):
    """({file: sha256}, {folder}) of everything under root."""
    files, folders = {}, set()
    for parent, dirs, names in os.walk(root):
        folders.update(os.path.join(parent, d) for d in dirs)
        for name in names:
            path = os.path.join(parent, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    files[path] = hashlib.sha256(f.read()).hexdigest()
    return files, folders


def try_mount(folder, options):
    """Mount a tmpfs at folder (root only); False where this process may not."""
    folder.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def unmount(folder):
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tmp world every case runs in (cwd), built once."""
    root = tmp_path_factory.mktemp("hostile")
    home = root / "home"
    image_tree(root / "imgs")
    code, out, err = in_process(["data", "folder", "--from", "imgs", "--name", "mine", "--no-progress"], root, home)
    assert code == 0, err
    code, out, err = in_process(["train", "omniglot-5w1s", "--data", "mine", "--out", "run", *TINY], root, home)
    assert code == 0, err
    run = root / "run"
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv"} <= {p.name for p in run.iterdir()}

    (root / "notes.txt").write_text("a user's notes\n")
    (root / "a-file").write_text("not a folder\n")
    # damaged and hostile checkpoints
    (root / "truncated.pt").write_bytes((run / "last.pt").read_bytes()[:1500])
    torch.save({"weight": torch.zeros(3)}, root / "foreign.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "step": 2}, root / "noconfig.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "config": {}, "algorithm": {}, "step": 2,
                "payload": Evil()}, root / "evil.pt")
    # a folder with another run's best.pt and metrics but no config.yaml or last.pt
    (root / "orphans").mkdir()
    shutil.copy(run / "best.pt", root / "orphans" / "best.pt")
    shutil.copy(run / "metrics.jsonl", root / "orphans" / "metrics.jsonl")
    # a run whose config.yaml is damaged, and one whose metrics end in a torn line
    shutil.copytree(run, root / "damaged", ignore=shutil.ignore_patterns(".lock"))
    (root / "damaged" / "config.yaml").write_text("steps: [1\nways: 5\n")
    shutil.copytree(run, root / "torn", ignore=shutil.ignore_patterns(".lock"))
    with open(root / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5, "met')
    # tampered caches: a class that points past the array; a malformed class entry
    for name, tamper in (("tampered", lambda classes: classes[-1].update(start=classes[-1]["start"] + 1000)),
                         ("malformed", lambda classes: classes[0].update(count="three"))):
        shutil.copytree(home / "mine", root / name)
        index = json.loads((root / name / "index.json").read_text())
        tamper(index["classes"])
        (root / name / "index.json").write_text(json.dumps(index))
    # an Omniglot zip whose deflate data is corrupt
    buffer = io.BytesIO()
    png(root / "scratch.png", seed=1, size=105)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images_background/Alpha/character01/0101_01.png", (root / "scratch.png").read_bytes())
    (root / "scratch.png").unlink()
    blob = bytearray(buffer.getvalue())
    blob[80:200] = bytes(range(120))  # inside the first member's compressed data
    (root / "corrupt.zip").write_bytes(bytes(blob))
    # a user's tree whose train and test folders share a class; one with a curves.png among its classes
    image_tree(root / "leaky", splits=(("train", 3), ("val", 2), ("test", 2)), per_class=2)
    shutil.copytree(root / "leaky" / "train" / "c00", root / "leaky" / "test" / "c00")
    image_tree(root / "plotted", splits=(("train", 6), ("val", 5), ("test", 5)), per_class=2)
    png(root / "plotted" / "train" / "curves.png", seed=9)
    png(root / "plotted" / "curves.png", seed=9)
    # miniImageNet with a row whose label is not its file name's wnid
    mini = root / "mini"
    (mini / "images").mkdir(parents=True)
    Image.new("RGB", (84, 84), (10, 20, 30)).save(mini / "images" / "n0153282900000001.jpg")
    (mini / "train.csv").write_text("filename,label\nn0153282900000001.jpg,n02222222\n")
    (mini / "val.csv").write_text("filename,label\n")
    (mini / "test.csv").write_text("filename,label\n")
    # LEO embedding files holding NaN (written by hand: write_leo_pickles refuses them)
    emb = root / "emb"
    for n, split in enumerate(("train", "val", "test")):
        features = np.random.default_rng(n).normal(size=(12, 4)).astype(np.float32)
        labels = np.repeat(np.arange(6), 2)
        keys = [make_key(f"{split}{c}", f"{i:03d}", prefix=i) for i, c in enumerate(labels)]
        write_leo_pickles(emb, split, features, labels, keys)
        if split == "train":
            features[3, 1] = np.nan
            with open(emb / "train_embeddings.pkl", "wb") as f:
                pickle.dump({"embeddings": features, "labels": labels, "keys": np.asarray(keys)}, f, protocol=2)
    # a support set with a class folder whose name is not UTF-8
    support = root / "support"
    for n, name in enumerate([b"caf\xe9", b"b", b"c", b"d", b"e"]):
        folder = os.path.join(os.fsencode(support), name)
        os.makedirs(folder)
        png(Path(os.fsdecode(folder)) / "0.png", seed=500 + n)
    png(root / "query" / "q.png", seed=7)
    # a read-only place: a read-only tmpfs, mounted by each case that needs it (see test_hostile_case)
    (root / "ro").mkdir()
    return {"root": root, "home": home}


class Evil:
    """A pickle that would run a shell command if it were ever unpickled without weights_only."""

    def __reduce__(self):
        return os.system, ("echo pwned > pwned.txt",)


@dataclass
class Case:
    id: str
    argv: str                  # split on spaces; {root} and {home} are filled in
    code: int
    message: str               # a substring of stderr (exit != 0) or stdout (exit 0), case-insensitive
    sub: bool = False          # run in a subprocess
    creates: list = field(default_factory=list)  # paths (relative to root) the case may create
    one_line: bool = True      # an error is exactly one line
    absent: str = ""           # a text that must not appear in the output
    needs: str = ""            # "ro": a read-only mount


TRAIN = "train omniglot-5w1s --data mine --out fresh --no-progress --set steps=2 --set filters=4"
CASES = [
    # --- the command line and the config: checked before any folder exists -----------------------------
    Case("version", "--version", 0, "fewshot 0.1.0", sub=True),
    Case("set-inner-lr-nan", f"{TRAIN} --set inner_lr=nan", 2, "inner_lr must be a finite number", sub=True),
    Case("set-inner-lr-dot-nan", f"{TRAIN} --set inner_lr=.nan", 2, "inner_lr must be a finite number"),
    Case("set-meta-lr-inf", f"{TRAIN} --set meta_lr=.inf", 2, "meta_lr must be a finite number"),
    Case("set-meta-lr-abc", f"{TRAIN} --set meta_lr=abc", 2, "meta_lr must be a finite number"),
    Case("set-val-every-0", f"{TRAIN} --set val_every=0", 2, "val_every must be a whole number >= 1"),
    Case("set-log-every-0", f"{TRAIN} --set log_every=0", 2, "log_every must be a whole number >= 1"),
    Case("set-save-every-0", f"{TRAIN} --set save_every=0", 2, "save_every must be a whole number >= 1"),
    Case("set-yaml-unparsable", f"{TRAIN} --set steps=[1", 2, "not a value YAML can read", sub=True),
    Case("set-yaml-tag", f"{TRAIN} --set steps=!!python/object/apply:os.system", 2, "YAML tags"),
    Case("set-yaml-tag-inside", f"{TRAIN} --set hidden=[!!python/name:os.system]", 2, "not a value YAML can read"),
    Case("set-steps-float", f"{TRAIN} --set steps=1.5", 2, "steps must be a whole number"),
    Case("set-steps-bool", f"{TRAIN} --set steps=true", 2, "steps must be a whole number"),
    Case("set-ways-1", f"{TRAIN} --set ways=1", 2, "ways must be at least 2"),
    Case("set-eval-query-0", f"{TRAIN} --set eval_query=0", 2, "eval_query must be"),
    Case("set-grad-clip-negative", f"{TRAIN} --set grad_clip_norm=-1", 2, "grad_clip_norm must be"),
    Case("set-gamma-0", f"{TRAIN} --set lr_decay_gamma=0", 2, "lr_decay_gamma must be a finite number > 0"),
    Case("set-dropout-1.5", f"{TRAIN} --set dropout_rate=1.5", 2, "dropout_rate must be below 1"),
    Case("set-hidden-negative", f"{TRAIN} --set hidden=[40,-1]", 2, "hidden must be a list of positive"),
    Case("set-channels-2", f"{TRAIN} --set channels=2", 2, "channels must be 1"),
    Case("set-data-number", "summary omniglot-5w1s --set data=2024", 2, "data must be a path or name"),
    Case("set-unknown-key", f"{TRAIN} --set shotz=1", 2, "unknown config key 'shotz'"),
    Case("set-no-equals", f"{TRAIN} --set ways", 2, "--set takes KEY=VALUE"),
    Case("mamlpp-eval-steps", "train mamlpp-omniglot-5w1s --data mine --out fresh --set eval_inner_steps=9", 2,
         "eval_inner_steps <= inner_steps"),
    Case("unknown-preset", "train no-such-preset --out fresh", 2, "unknown preset 'no-such-preset'"),
    Case("summary-filters-0", "summary omniglot-5w1s --set filters=0", 2, "filters must be a whole number >= 1"),
    Case("summary-widths-0", "summary omniglot-5w1s --set model=resnet12 --set widths=[0]", 2, "widths must be"),
    Case("summary-unknown-model", "summary omniglot-5w1s --set model=resnet99", 2, "unknown model 'resnet99'"),
    Case("train-device-bogus", f"{TRAIN} --device gpu0", 2, "--device 'gpu0' is not a device"),
    Case("train-device-cuda-9", f"{TRAIN} --device cuda:9", 2, "cuda"),
    Case("eval-device-cuda", "eval run --device cuda --tasks 2", 2, "cuda", sub=True),
    Case("eval-device-bogus", "eval run --device tpu", 2, "is not a device"),
    Case("predict-device-bogus", "predict run --support support --query query --device quantum", 2, "not a device"),
    Case("train-threads-negative", f"{TRAIN} --threads -1", 2, "--threads must be at least 1"),
    Case("eval-threads-0", "eval run --threads 0", 2, "--threads must be at least 1"),
    Case("eval-at-steps-letters", "eval run --at-steps a,b", 2, "--at-steps takes", sub=True),
    Case("eval-at-steps-negative", "eval run --at-steps -1", 2, "--at-steps takes"),
    Case("eval-at-steps-empty", "eval run --at-steps ,", 2, "--at-steps takes"),
    Case("eval-tasks-0", "eval run --tasks 0", 2, "--tasks must be at least 1"),
    Case("eval-tasks-letters", "eval run --tasks many", 2, "invalid int value", one_line=False),
    Case("eval-steps-negative", "eval run --inner-steps -1", 2, "--inner-steps must be at least 0"),
    Case("eval-seed-negative", "eval run --seed -5", 2, "--seed must be at least 0"),
    Case("eval-split-bogus", "eval run --classes holdout --tasks 2 --no-progress", 2, "unknown split 'holdout'"),
    Case("train-time-limit-nan", f"{TRAIN} --time-limit nan", 2, "--time-limit takes"),
    Case("train-time-limit-negative", f"{TRAIN} --time-limit -1", 2, "--time-limit takes"),
    Case("train-procs-0", f"{TRAIN} --procs 0", 2, "--procs must be at least 1"),
    Case("data-size-negative", "data folder --from imgs --name sized --size -5", 2, "--size takes"),
    Case("data-size-0", "data folder --from imgs --name sized --size 0", 2, "--size takes", sub=True),
    Case("data-size-huge", "data folder --from imgs --name sized --size 100000", 2, "--size takes"),
    Case("data-split-nan", "data folder --from imgs --name x --ratios nan,0.5,0.5", 2, "finite ratios"),
    Case("data-seed-negative", "data folder --from imgs --name x --seed -1", 2, "--seed must be at least 0"),
    Case("data-name-escapes", "data folder --from imgs --name ../escape", 2, "plain folder name"),
    Case("data-miniimagenet-download", "data miniimagenet --download", 2, "takes --from PATH"),
    Case("data-omniglot-both", "data omniglot --download --from imgs", 2, "exactly one of --download"),
    Case("predict-top-k-0", "predict run --support support --query query --top-k 0", 2, "--top-k must be"),
    # --- outputs never replace what they were not made for ----------------------------------------------
    Case("predict-csv-last-pt", "predict run --support support --query query --csv run/last.pt", 2,
         "is a file of the run", sub=True),
    Case("eval-scores-best-pt", "eval run --scores run/best.pt --tasks 2 --no-progress", 2, "is a file of the run"),
    Case("eval-scores-metrics-csv", "eval run --scores run/metrics.csv", 2, "is a file of the run"),
    Case("eval-scores-metrics-jsonl", "eval run --scores run/metrics.jsonl", 2, "is a file of the run"),
    Case("eval-scores-lock", "eval run --scores run/.lock", 2, "is a file of the run"),
    Case("eval-scores-config-elsewhere", "eval run --scores torn/config.yaml", 2, "is a file of the run"),
    Case("plot-out-config", "plot run --out run/config.yaml", 2, "is a file of the run"),
    Case("plot-out-notes", "plot run --out notes.txt", 2, "is not a plot drawn by fewshot"),
    Case("plot-out-users-image", "plot run --out imgs/train/c00/0.png", 2, "is not a plot drawn by fewshot"),
    Case("plot-out-under-a-file", "plot run --out a-file/curves.png", 2, "is a file, not a folder"),
    Case("plot-out-folder", "plot run --out imgs", 2, "is a folder"),
    Case("eval-scores-index", "eval run --scores {home}/mine/index.json", 2, "is a file of the dataset"),
    Case("eval-scores-array", "eval run --scores {home}/mine/images-28.npy", 2, "is a file of the dataset"),
    Case("eval-scores-folder", "eval run --scores run", 2, "is a folder"),
    Case("eval-scores-under-a-file", "eval run --scores a-file/scores.txt --tasks 2 --no-progress", 2,
         "a-file"),
    Case("predict-csv-image", "predict run --support support --query query --csv imgs/train/c00/0.png", 2,
         "is not a text file"),
    Case("embed-into-run", "embed omniglot-5w1s --data mine --out run --pretrain-steps 1", 2, "holds a training run"),
    Case("embed-into-dataset", "embed omniglot-5w1s --data mine --out {home}/mine --pretrain-steps 1", 2,
         "holds a prepared dataset"),
    Case("embed-into-file", "embed omniglot-5w1s --data mine --out notes.txt --pretrain-steps 1", 2, "is a file"),
    Case("train-into-dataset", "train omniglot-5w1s --data mine --out {home}/mine", 2, "holds a prepared dataset"),
    Case("train-into-file", "train omniglot-5w1s --data mine --out notes.txt", 2, "is a file"),
    Case("train-into-run", f"train omniglot-5w1s --data mine --out run {' '.join(TINY)}", 2, "already holds a run"),
    Case("train-into-orphans", "train omniglot-5w1s --data mine --out orphans --set steps=2", 2,
         "another run's files"),
    Case("data-name-existing", "data folder --from imgs --name mine --no-progress", 2,
         "already holds a prepared dataset"),
    Case("data-omniglot-name-existing", "data omniglot --from {root}/corrupt.zip --name mine", 2,
         "already holds a prepared dataset"),
    Case("data-into-run", "data folder --from imgs --root . --name run --no-progress", 2, "holds a training run"),
    # --- data that is damaged, mislabelled or leaks -----------------------------------------------------
    Case("zip-corrupt-deflate", "data omniglot --from corrupt.zip --name z --no-progress", 2,
         "is not a readable zip", sub=True),
    Case("folder-class-leak", "data folder --from leaky --name leak --no-progress", 2, "is in both"),
    Case("folder-curves-png-is-no-class", "data folder --from plotted --name plotted --no-progress", 0,
         "prepared 16 classes", creates=["home/plotted"]),
    Case("miniimagenet-wrong-label", "data miniimagenet --from mini --name m --no-progress", 2,
         "is an image of class n01532829"),
    Case("cache-index-past-array", "eval run --data tampered --tasks 2 --no-progress", 2,
         "does not match its index"),
    Case("cache-index-malformed", "eval run --data malformed --tasks 2 --no-progress", 2, "malformed class entry"),
    Case("data-missing", "eval run --data nowhere --tasks 2 --no-progress", 2, "neither a folder nor a dataset"),
    Case("embeddings-nan", "train leo-omniglot-5w1s --data emb --out leo --set embedding_dim=4 --no-progress", 2,
         "NaN"),
    # --- checkpoints ------------------------------------------------------------------------------------
    Case("checkpoint-evil", "eval evil.pt", 2, "refused unread", sub=True, absent="weights_only"),
    Case("checkpoint-truncated", "eval truncated.pt", 2, "truncated or not a checkpoint", absent="weights_only"),
    Case("checkpoint-foreign", "eval foreign.pt", 2, "not a fewshot checkpoint"),
    Case("checkpoint-without-config", "eval noconfig.pt", 2, "damaged fewshot checkpoint"),
    Case("checkpoint-folder-without-one", "eval imgs", 2, "holds no checkpoint"),
    Case("checkpoint-missing", "predict missing.pt --support support --query query", 2, "does not exist"),
    Case("init-missing", f"{TRAIN} --init missing.pt", 2, "does not exist"),
    Case("resume-damaged-config", "train --resume damaged --no-progress", 2, "damaged"),
    Case("resume-nothing", "train --resume imgs --no-progress", 2, "no run to resume"),
    # --- names that are not UTF-8; torn logs ------------------------------------------------------------
    Case("predict-non-utf8-class", "predict run --support support --query query --csv predictions.csv", 0,
         "query", creates=["predictions.csv"]),
    Case("plot-torn-metrics", "plot torn", 0, "wrote", creates=["torn/curves.png"], one_line=False),
    # --- a read-only file system ------------------------------------------------------------------------
    Case("ro-train", "train omniglot-5w1s --data mine --out ro/run --set steps=2", 2, "read-only", needs="ro",
         sub=True),
    Case("ro-eval-scores", "eval run --scores ro/scores.txt --tasks 2 --no-progress", 2, "read-only", needs="ro"),
    Case("ro-data", "data folder --from imgs --root ro --name x --no-progress", 2, "read-only", needs="ro"),
    Case("ro-plot", "plot run --out ro/curves.png", 2, "read-only", needs="ro"),
    Case("ro-predict-csv", "predict run --support support --query query --csv ro/p.csv", 2, "read-only",
         needs="ro"),
    Case("ro-embed", "embed omniglot-5w1s --data mine --out ro/emb --pretrain-steps 1 --no-progress", 2, "read-only",
         needs="ro"),
]


def test_the_table_has_at_least_60_distinct_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(world, case):
    root, home = world["root"], world["home"]
    if case.needs == "ro" and not try_mount(root / "ro", "ro,size=64k"):
        pytest.skip("no read-only tmpfs here (mounting one needs root)")
    try:
        argv = [a.format(root=root, home=home) for a in case.argv.split()]
        before_files, before_folders = snapshot(root)
        runner = subprocess_run if case.sub else in_process
        code, out, err = runner(argv, root, home)
        after_files, after_folders = snapshot(root)
    finally:
        if case.needs == "ro":
            unmount(root / "ro")

    shown = f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, shown
    assert code == case.code, shown
    said = (out if code == 0 else err).lower()
    assert case.message.lower() in said, shown
    if case.absent:
        assert case.absent not in out + err, shown
    if code == 2 and case.one_line:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fewshot: error: "), shown
    changed = sorted(p for p, digest in before_files.items() if after_files.get(p) != digest)
    assert not changed, f"changed or removed: {changed}\n{shown}"
    allowed = [str(root / c) for c in case.creates]
    new = sorted(p for p in (set(after_files) - set(before_files)) | (after_folders - before_folders)
                 if not any(p == a or p.startswith(a + os.sep) for a in allowed))
    assert not new, f"left behind: {new}\n{shown}"
    assert not (root / "pwned.txt").exists()


def test_a_name_that_is_not_utf8_is_shown_escaped(world):
    code, out, err = in_process(["predict", "run", "--support", "support", "--query", "query", "--json"],
                                world["root"], world["home"])
    assert code == 0, err
    assert "caf\\xe9" in json.loads(out)["classes"]


# --- a full disk ---------------------------------------------------------------------------------------

def test_a_full_disk_stops_a_run_with_one_line_and_last_pt_stays_loadable(world, tmp_path):
    disk = tmp_path / "disk"
    if not try_mount(disk, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk case is not run")
    try:
        root, home = world["root"], world["home"]
        out = disk / "run"
        code, _, err = subprocess_run(["train", "omniglot-5w1s", "--data", "mine", "--out", str(out), *TINY],
                                      root, home)
        assert code == 0, err
        good = (out / "last.pt").read_bytes()
        # fill the disk to the last byte
        handle = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (65536, 4096, 1):
                try:
                    while True:
                        os.write(handle, b"\0" * chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
        finally:
            os.close(handle)
        # same length, in place: the config asks for more steps without needing a new block
        config = (out / "config.yaml").read_bytes()
        assert b"\nsteps: 2\n" in config
        with open(out / "config.yaml", "r+b") as f:
            f.write(config.replace(b"\nsteps: 2\n", b"\nsteps: 6\n"))
        code, stdout, err = subprocess_run(["train", "--resume", str(out), "--threads", "1", "--no-progress"],
                                           root, home)
        shown = f"exit {code}\nstdout:\n{stdout}\nstderr:\n{err}"
        assert code == 2 and "Traceback" not in stdout + err, shown
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fewshot: error: "), shown
        assert str(out) in lines[0] and ("full" in lines[0] or "space" in lines[0]), shown
        state = checkpoint.load(out / "last.pt")  # loadable, and the one saved before the disk filled
        assert state["step"] == 2 and (out / "last.pt").read_bytes() == good
        assert not list(out.glob(".*.tmp"))
        # torch's writer reports the full disk as a RuntimeError: still one line, and the old file stays
        with pytest.raises((FewshotError, OSError), match="disk|space"):
            checkpoint.save(out / "last.pt", config={}, algorithm={"w": torch.zeros(100_000)}, step=3)
        assert (out / "last.pt").read_bytes() == good and not list(out.glob(".*.tmp"))
    finally:
        unmount(disk)


# --- signals ---------------------------------------------------------------------------------------------

def test_sigterm_twice_during_training_saves_and_exits_143(world, tmp_path):
    root, home = world["root"], world["home"]
    out = tmp_path / "long"
    argv = ["train", "omniglot-5w1s", "--data", "mine", "--out", str(out), "--set", "steps=100000",
            "--set", "filters=4", "--set", "meta_batch=2", "--set", "val_every=100000", "--set", "log_every=1",
            "--set", "save_every=100000", "--threads", "1", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "fewshot.cli", *argv], cwd=root, env=environment(home),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.01)
        process.send_signal(signal.SIGTERM)  # during the save the first one started: must not cut it short
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    text = stdout.decode() + stderr.decode()
    assert process.returncode == 143, text
    assert "Traceback" not in text
    state = checkpoint.load(out / "last.pt")
    assert state["step"] >= 2
    assert not list(out.glob(".*.tmp"))


# --- files respect the umask ---------------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        checkpoint.save(tmp_path / "b.pt", config={}, algorithm={}, step=0)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == mode


# --- caches keyed on content ---------------------------------------------------------------------------

def test_a_changed_raw_folder_never_meets_its_stale_cache(tmp_path, fewshot_home):
    raw = image_tree(tmp_path / "raw", splits=(("train", 3), ("val", 2), ("test", 2)), per_class=2)
    config = apply_overrides(load_preset("omniglot-5w1s"), {"data": str(raw), "dataset": "folder"})
    first = data.resolve(config, progress=False)
    assert data.resolve(config, progress=False) == first  # unchanged: the same cache, not decoded again
    old_pixels = np.array(read_dataset(first, 28).images)
    Image.fromarray(np.full((28, 28), 7, np.uint8), "L").save(raw / "train" / "c00" / "0.png")
    os.utime(raw / "train" / "c00" / "0.png", ns=(1, 1))  # even with an old modification time: the size changed
    second = data.resolve(config, progress=False)
    assert second != first
    new = read_dataset(second, 28)
    c00 = next(c for c in new.classes if c.name == "c00")
    assert (new.images[c00.start] == 7).all() and not (old_pixels[c00.start] == 7).all()
    # another size is another cache; the first stays valid
    small = data.resolve(apply_overrides(config, {"image_size": 14}), progress=False)
    assert small != second and read_dataset(small, 14).images.shape[-1] == 14
    assert read_dataset(second, 28).images.shape[-1] == 28


def test_another_size_keeps_the_first_arrays_valid_and_a_changed_source_is_refused(tmp_path, fewshot_home, capsys):
    raw = image_tree(tmp_path / "raw", splits=(("train", 3), ("val", 2), ("test", 2)), per_class=2)
    code = cli.main(["data", "folder", "--from", str(raw), "--name", "sized", "--size", "20", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    folder = fewshot_home / "sized"
    at20 = np.array(read_dataset(folder, 20).images)
    before = snapshot(folder)
    config = apply_overrides(load_preset("omniglot-5w1s"), {"data": "sized"})
    # issue 23: nothing but `fewshot data` writes into a dataset; the other size is a cache of its source
    at28 = data.resolve(config, progress=False)
    assert at28 != folder and at28.parent == fewshot_home / "cache" and snapshot(folder) == before
    assert read_dataset(folder, None).meta["sizes"] == [20]
    assert np.array_equal(read_dataset(folder, 20).images, at20)  # the first size is untouched and valid
    assert read_dataset(at28, 28).images.shape == (len(at20), 1, 28, 28)
    assert [(c.name, c.group) for c in read_dataset(at28, None).classes] == \
        [(c.name, c.group) for c in read_dataset(folder, None).classes]  # the same classes in the same splits
    assert data.resolve(config, progress=False) == at28  # decoded once
    # the source changes: a third size is refused instead of mixing two sources in one index
    png(raw / "train" / "c00" / "9.png", seed=99)
    with pytest.raises(FewshotError, match="has changed since"):
        data.resolve(apply_overrides(config, {"image_size": 16}), progress=False)
    assert np.array_equal(read_dataset(folder, 20).images, at20)


def test_embed_saves_on_sigterm_and_exits_143(world, tmp_path):
    root, home = world["root"], world["home"]
    out = tmp_path / "embed"
    argv = ["embed", "omniglot-5w1s", "--data", "mine", "--out", str(out), "--pretrain-steps", "1000000", "--set", "filters=4",
            "--batch-size", "8", "--threads", "1", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "fewshot.cli", *argv], cwd=root, env=environment(home),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    text = stdout.decode() + stderr.decode()
    assert process.returncode == 143 and "Traceback" not in text, text
    assert checkpoint.load(out / "pretrain.pt")["step"] >= 100  # the state at the signal, not at the last save


@pytest.mark.parametrize("argv", [["--version"], ["train", "omniglot-5w1s", "--out", "x", "--set", "inner_lr=nan"],
                                  ["data", "folder", "--from", "x", "--size", "0"]])
def test_cheap_failures_do_not_import_torch(tmp_path, argv):
    probe = ("import sys\nfrom fewshot import cli\ntry:\n    code = cli.main(sys.argv[1:])\n"
             "except SystemExit as stop:\n    code = stop.code\nprint('torch' in sys.modules, code)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, env=environment(tmp_path / "home"),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == ["False", "0" if argv == ["--version"] else "2"], done.stdout + done.stderr
    assert not list(tmp_path.iterdir())
