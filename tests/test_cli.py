"""The command line as a user meets it: real Omniglot, a few steps, and every bad input (the bad
inputs on a small dataset built here, so they run without the shared data)."""
import json
import math

import pytest
import torch

from fewshot.cli import main, prediction_lines
from fewshot.evaluate import confidence
from fewshot.runs import RunLock

from helpers import one_error_line, run, tagged_dataset

FAST = ["--set", "steps=4", "--set", "meta_batch=2", "--set", "filters=8", "--set", "val_every=2",
        "--set", "val_tasks=4", "--set", "log_every=2", "--set", "save_every=2", "--no-progress"]


def train_fast(capsys, data, out):
    """`fewshot train omniglot-5w1s` for 4 small steps on `data` into `out`."""
    code, stdout, _ = run(capsys, "train", "omniglot-5w1s", "--data", data, "--out", out, *FAST)
    assert code == 0 and "done: 4 steps" in stdout
    return out


@pytest.fixture
def trained(tmp_path, omniglot28, capsys):
    return train_fast(capsys, omniglot28, tmp_path / "run")


@pytest.fixture
def small_data(tmp_path):
    """A prepared 28x28 dataset of 80 classes of 8 noise images: enough for every preset's checks."""
    return tagged_dataset(tmp_path / "small-data", classes=80, size=28)


@pytest.fixture
def small_run(tmp_path, small_data, capsys):
    return train_fast(capsys, small_data, tmp_path / "small-run")


def test_train_eval_resume_plot_on_real_omniglot(tmp_path, trained, capsys):
    code, first, _ = run(capsys, "eval", trained, "--tasks", "20", "--no-progress")
    assert code == 0 and "test split: accuracy" in first and "20 tasks" in first
    code, second, _ = run(capsys, "eval", trained / "best.pt", "--tasks", "20", "--no-progress")
    assert second.split(":", 1)[1] == first.split(":", 1)[1]  # a fixed set of tasks: identical numbers
    code, text, _ = run(capsys, "eval", trained, "--tasks", "20", "--json", "--scores", tmp_path / "scores.txt")
    result = json.loads(text)
    scores = [float(line) for line in (tmp_path / "scores.txt").read_text().split()]
    assert result["tasks"] == 20 and len(scores) == 20
    # every score is a fraction of the 5 x 1 queries of a 5-way task; mean and interval follow from them
    assert all(abs(5 * s - round(5 * s)) < 1e-12 for s in scores)
    assert result["mean"] == pytest.approx(sum(scores) / 20, abs=1e-12)
    spread = math.sqrt(sum((s - result["mean"]) ** 2 for s in scores) / 20)
    assert result["ci95"] == pytest.approx(1.96 * spread / math.sqrt(20), abs=1e-12)
    assert result["inner_steps"] == 10 and result["split"] == "test"
    assert f"{100 * result['mean']:.2f}%" in first
    # continue the same run for more steps through its own config
    config = (trained / "config.yaml").read_text().replace("steps: 4", "steps: 6")
    (trained / "config.yaml").write_text(config)
    code, stdout, _ = run(capsys, "train", "--resume", trained, "--no-progress")
    assert code == 0 and "done: 6 steps" in stdout
    code, stdout, _ = run(capsys, "plot", trained)
    assert code == 0 and (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confidence_is_the_mean_and_1_96_population_std_over_sqrt_n():
    """As the MAML code reports it (numpy's std, ddof 0): for 0.25, 0.75, 0.25, 0.75 the mean is 0.5,
    the std 0.25, and the half-width 1.96 * 0.25 / sqrt(4) = 0.245."""
    mean, half_width = confidence([0.25, 0.75, 0.25, 0.75])
    assert mean == 0.5 and half_width == pytest.approx(0.245, abs=1e-15)
    # 1, 0, 0: mean 1/3, std sqrt(2)/3, half-width 1.96 * sqrt(2) / 3 / sqrt(3)
    mean, half_width = confidence([1.0, 0.0, 0.0])
    assert mean == pytest.approx(1 / 3, abs=1e-15)
    assert half_width == pytest.approx(1.96 * math.sqrt(2) / 3 / math.sqrt(3), abs=1e-15)
    assert confidence([0.6] * 7) == (pytest.approx(0.6, abs=1e-15), 0.0)  # no spread, no interval


def test_the_eval_line_names_the_protocol_in_words():
    from fewshot.evaluate import describe
    result = {"preset": "p", "step": 4, "split": "test", "metric": "accuracy", "mean": 0.5, "ci95": 0.25,
              "tasks": 3, "ways": 5, "shots": 1, "query": 1, "inner_steps": 1, "inner_lr": 0.4, "by_steps": {"1": {}}}
    assert describe(result) == ("p step 4, test split: accuracy 50.00% +- 25.00% (95% CI, 3 tasks, 5-way 1-shot, "
                                "1 query per class, 1 inner step at lr 0.4)")
    assert "15 queries per class, 10 inner steps" in describe({**result, "query": 15, "inner_steps": 10})


def test_second_start_uses_the_cache(tmp_path, omniglot28, fewshot_home, capsys):
    for name in ("a", "b"):
        code, _, _ = run(capsys, "train", "omniglot-5w1s", "--data", omniglot28, "--out", tmp_path / name, *FAST)
        assert code == 0
    caches = list((fewshot_home / "cache").iterdir())
    assert len(caches) == 1 and (caches[0] / "images-28.npy").is_file()


def test_summary_and_presets(capsys):
    code, out, _ = run(capsys, "summary", "omniglot-20w1s")
    assert code == 0 and "20-way" in out and "112,261" not in out  # a 20-way head has more outputs
    code, out, _ = run(capsys, "summary", "leo-miniimagenet-5w1s")  # no network: LEO's own weights
    assert code == 0 and "input (5, 640)" in out and "encoder" in out and "(640, 64)" in out
    assert out.splitlines()[-1].split()[-1] == f"{640 * 64 + 3 * 128 * 128 + 64 * 1280 + 64 + 640:,}"
    code, out, _ = run(capsys, "summary", "metasgd-omniglot-5w1s")  # a learned rate per network weight
    assert code == 0 and out.splitlines()[-1].split()[-1] == f"{2 * 112_261:,}"
    code, out, _ = run(capsys, "presets")
    names = [line.split()[0] for line in out.splitlines()]
    assert {"omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s", "omniglot-5w1s-pytorch"} <= set(names)


@pytest.mark.parametrize("argv,message", [
    (["train", "no-such-preset", "--out", "X"], "unknown preset 'no-such-preset'"),
    (["train", "omniglot-5w1s", "--out", "X", "--set", "shotz=1"], "unknown config key 'shotz'"),
    (["train", "omniglot-5w1s", "--out", "X", "--set", "ways"], "--set takes KEY=VALUE"),
    (["train", "omniglot-5w1s", "--out", "X", "--data", "MISSING"], "neither a folder nor a dataset"),
    (["train", "omniglot-5w1s", "--out", "X", "--data", "DATA", "--set", "ways=2000"],
     "2000-way tasks need 2000 classes"),
    (["train", "omniglot-5w1s", "--out", "X", "--data", "DATA", "--set", "shots=15", "--set", "query=10"],
     "need 25 images per class, but class '"),
    (["train", "omniglot-5w1s", "--out", "X", "--data", "EMPTY"], "holds no Omniglot images"),
    (["eval", "MISSING.pt"], "does not exist"),
    (["eval", "EMPTY"], "holds no checkpoint"),
])
def test_bad_input_gets_one_clear_line(tmp_path, small_data, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [{"X": tmp_path / "out", "MISSING": tmp_path / "missing", "MISSING.pt": tmp_path / "missing.pt",
             "DATA": small_data, "EMPTY": tmp_path / "empty"}.get(a, a) for a in argv]
    code, _, err = run(capsys, *argv, "--no-progress")
    assert code == 2
    assert message in one_error_line(err)


def test_bad_checkpoints_and_busy_or_taken_run_folders(tmp_path, small_run, small_data, capsys):
    trained = small_run
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "last.pt").read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    code, _, err = run(capsys, "eval", truncated)
    assert code == 2 and "truncated or not a checkpoint" in one_error_line(err)
    code, _, err = run(capsys, "eval", foreign)
    assert code == 2 and "not a fewshot checkpoint" in one_error_line(err)
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--data", small_data, "--out", trained, *FAST)
    assert code == 2 and "already holds a run" in one_error_line(err)
    lock = RunLock(trained)
    try:
        code, _, err = run(capsys, "train", "--resume", trained, "--no-progress")
        assert code == 2 and "in use by another fewshot process" in one_error_line(err)
    finally:
        lock.release()
    code, _, err = run(capsys, "train", "--resume", tmp_path, "--no-progress")
    assert code == 2 and "no run to resume" in one_error_line(err)
    code, _, err = run(capsys, "train", "--resume", trained, "--init", trained, "--no-progress")
    assert code == 2 and "drop PRESET, --data, --set and --init" in one_error_line(err)
    code, _, err = run(capsys, "train", "omniglot-20w1s", "--data", small_data, "--init", trained, "--out",
                       tmp_path / "transfer", *FAST)
    assert code == 2 and "does not fit this run" in one_error_line(err) and not (tmp_path / "transfer").exists()
    after = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != ".lock"}
    before.pop(".lock", None)
    assert before == after  # nothing that existed was damaged


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["presets"], ["presets", "--keys"], ["train", "--help"]])
def test_help_presets_and_version_do_not_import_torch(argv):
    """The lean CLI: these answer without loading torch (measured CPU time: README)."""
    import subprocess
    import sys
    code = ("import sys\nfrom fewshot.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip()
    assert done.stderr.split() == ["False", "False"], done.stderr


def test_presets_keys_prints_the_schema_one_key_per_line(capsys):
    from fewshot.config import DEFAULTS
    code, out, _ = run(capsys, "presets", "--keys")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["key", "type", "default", "range"]
    assert [line.split()[0] for line in lines[1:]] == list(DEFAULTS)
    row = next(line for line in lines if line.startswith("inner_optimizer "))
    assert row.split()[1:5] == ["sgd", "|", "adam", "sgd"] and "reptile" in row


def test_train_help_says_set_repeats_and_where_the_keys_are(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "repeat it for several keys" in text and "`fewshot presets --keys` lists every key" in text


@pytest.mark.parametrize("argv,message", [
    (["train", "omniglot-5w1s", "--out", "X", "--steps", "6"], "--steps extends a run with --resume RUN_DIR"),
    (["train", "--resume", "X", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["train", "omniglot-5w1s", "--out", "X", "--set", "msl_epochs=2"], "msl_epochs: 2 would be ignored"),
    (["train", "mamlpp-omniglot-5w1s", "--out", "X", "--set", "model=resnet12"], "per_step_bn: true would be ignored"),
    (["train", "omniglot-5w1s-pytorch", "--out", "X", "--set", "algorithm=protonet"], "has no head"),
])
def test_steps_without_resume_and_ignored_settings_are_one_line(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "out") if a == "X" else a for a in argv]
    code, _, err = run(capsys, *argv, "--no-progress")
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_resume_with_steps_extends_a_finished_run(small_run, capsys):
    code, stdout, _ = run(capsys, "train", "--resume", small_run, "--steps", "6", "--threads", "1", "--no-progress")
    assert code == 0 and "done: 6 steps" in stdout
    from fewshot import checkpoint
    assert checkpoint.load(small_run / "last.pt")["step"] == 6
    assert checkpoint.load(small_run / "last.pt")["config"].steps == 6


def test_prediction_lines_are_aligned_under_a_header():
    rows = [{"file": "a.png", "label": "cat", "probability": 0.9123, "top": [("cat", 0.9123), ("dog", 0.05)]},
            {"file": "longer/b.png", "label": "horse", "probability": 0.5, "top": [("horse", 0.5), ("cat", 0.25)]}]
    assert prediction_lines(rows) == [
        "file          label  probability  (next most likely)",
        "a.png         cat          0.912  (dog   0.050)",
        "longer/b.png  horse        0.500  (cat   0.250)"]
    assert prediction_lines(rows[:1], header=False) == ["a.png  cat          0.912  (dog   0.050)"]


def test_embed_given_a_leo_preset_uses_its_image_preset_and_says_so(capsys):
    from fewshot.cli import _image_counterpart
    assert _image_counterpart("leo-omniglot-5w1s") == "omniglot-5w1s"
    assert "leo-omniglot-5w1s is a LEO preset on embeddings; embedding with its image preset omniglot-5w1s" in \
        capsys.readouterr().err
    assert _image_counterpart("leo-miniimagenet-conv4-5w5s") == "maml-miniimagenet-5w1s"
    assert _image_counterpart("omniglot-5w1s") == "omniglot-5w1s" and capsys.readouterr().err.count("note") == 1
    # LEO's published features have no image preset here: one line naming what to give instead
    code, _, err = run(capsys, "embed", "leo-miniimagenet-5w1s", "--out", "unused")
    assert code == 2 and "give fewshot embed an image preset" in one_error_line(err)
