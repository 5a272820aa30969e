"""The command line as a user meets it: real Omniglot, a few steps, and every bad input."""
import json

import pytest
import torch

from fewshot.train import RunLock

from helpers import one_error_line, run

FAST = ["--set", "steps=4", "--set", "meta_batch=2", "--set", "filters=8", "--set", "val_every=2",
        "--set", "val_tasks=4", "--set", "log_every=2", "--set", "save_every=2", "--no-progress"]


@pytest.fixture
def trained(tmp_path, omniglot28, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "omniglot-5w1s", "--data", omniglot28, "--out", out, *FAST)
    assert code == 0 and "done: 4 steps" in stdout
    return out


def test_train_eval_resume_plot_on_real_omniglot(tmp_path, trained, capsys):
    code, first, _ = run(capsys, "eval", trained, "--tasks", "20", "--no-progress")
    assert code == 0 and "test split: accuracy" in first and "20 tasks" in first
    code, second, _ = run(capsys, "eval", trained / "best.pt", "--tasks", "20", "--no-progress")
    assert second.split(":", 1)[1] == first.split(":", 1)[1]  # a fixed set of tasks: identical numbers
    code, text, _ = run(capsys, "eval", trained, "--tasks", "20", "--json")
    result = json.loads(text)
    assert result["tasks"] == 20 and 0 <= result["mean"] <= 1 and result["ci95"] >= 0
    assert result["inner_steps"] == 10 and result["split"] == "test"
    assert f"{100 * result['mean']:.2f}%" in first
    # continue the same run for more steps through its own config
    config = (trained / "config.yaml").read_text().replace("steps: 4", "steps: 6")
    (trained / "config.yaml").write_text(config)
    code, stdout, _ = run(capsys, "train", "--resume", trained, "--no-progress")
    assert code == 0 and "done: 6 steps" in stdout
    code, stdout, _ = run(capsys, "plot", trained)
    assert code == 0 and (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
def test_bad_input_gets_one_clear_line(tmp_path, omniglot28, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [{"X": tmp_path / "out", "MISSING": tmp_path / "missing", "MISSING.pt": tmp_path / "missing.pt",
             "DATA": omniglot28, "EMPTY": tmp_path / "empty"}.get(a, a) for a in argv]
    code, _, err = run(capsys, *argv, "--no-progress")
    assert code == 2
    assert message in one_error_line(err)


def test_bad_checkpoints_and_busy_or_taken_run_folders(tmp_path, trained, omniglot28, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "last.pt").read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    code, _, err = run(capsys, "eval", truncated)
    assert code == 2 and "truncated or not a checkpoint" in one_error_line(err)
    code, _, err = run(capsys, "eval", foreign)
    assert code == 2 and "not a fewshot checkpoint" in one_error_line(err)
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--data", omniglot28, "--out", trained, *FAST)
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
    code, _, err = run(capsys, "train", "omniglot-20w1s", "--data", omniglot28, "--init", trained, "--out",
                       tmp_path / "transfer", *FAST)
    assert code == 2 and "does not fit this run" in one_error_line(err) and not (tmp_path / "transfer").exists()
    after = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != ".lock"}
    before.pop(".lock", None)
    assert before == after  # nothing that existed was damaged
