"""The trainer under faults: signals at every kind of moment, kill -9, damaged or
foreign run files, failed starts, a diverging loss. Nothing trained is lost, nothing
that existed is overwritten, and every refusal is one FewshotError line."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewshot import checkpoint
from fewshot import train as trainer
from fewshot.errors import FewshotError
from fewshot.runs import read_metrics
from fewshot.train import train

from helpers import tagged_dataset, tiny_config


@pytest.fixture
def data(tmp_path):
    return str(tagged_dataset(tmp_path / "data", classes=80))


def weights(out, name="last.pt"):
    return checkpoint.load(Path(out) / name)["algorithm"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def log(out):
    return [(r["step"], r["loss"], r.get("val_metric")) for r in read_metrics(out)]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def after_optimizer_step(monkeypatch, hook):
    """Call hook(n) right after the n-th optimizer step (1-based), inside the trainer's step."""
    real = trainer.make_optimizer

    def make(algorithm, config):
        optimizer, schedule = real(algorithm, config)
        step, calls = optimizer.step, [0]

        def patched(*args, **kwargs):
            out = step(*args, **kwargs)
            calls[0] += 1
            hook(calls[0])
            return out
        optimizer.step = patched
        return optimizer, schedule
    monkeypatch.setattr(trainer, "make_optimizer", make)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_a_signal_right_after_the_optimizer_step_saves_those_weights_under_their_step(tmp_path, data, monkeypatch):
    config = tiny_config(data=data, steps=6, save_every=100, log_every=1, val_every=100)
    full = train(config, tmp_path / "full", progress=False, stop_after=3)  # weights after exactly 3 steps
    after_optimizer_step(monkeypatch, lambda n: n == 3 and os.kill(os.getpid(), signal.SIGTERM))
    part = train(config, tmp_path / "part", progress=False)
    assert part["stopped"] and part["signal"] == signal.SIGTERM and part["reason"] == "signal"
    assert checkpoint.load(tmp_path / "part" / "last.pt")["step"] == 3 == full["step"]
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "part"))
    monkeypatch.undo()
    train(out=tmp_path / "part", resume=True, progress=False)
    train(out=tmp_path / "full", resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert log(tmp_path / "full") == log(tmp_path / "part") and len(log(tmp_path / "full")) == 6


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_signals_during_the_final_save_are_ignored_until_it_is_written(tmp_path, data, monkeypatch, number):
    config = tiny_config(data=data, steps=8, save_every=100, log_every=2, val_every=100)
    after_optimizer_step(monkeypatch, lambda n: n == 5 and os.kill(os.getpid(), number))
    real_save, saves = checkpoint.save, []

    def save(path, **state):
        saves.append(state["step"])
        if state["step"] == 5:  # the save the first signal started: two more arrive during it
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        real_save(path, **state)
    monkeypatch.setattr(checkpoint, "save", save)
    # SIGINT as a run started from a terminal has it: a shell starting pytest in the
    # background hands it SIGINT ignored, and the trainer keeps an ignored SIGINT ignored
    # (test_a_run_started_ignoring_sigint_keeps_ignoring_it)
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        result = train(config, tmp_path / "run", progress=False)
        assert result["signal"] == number and result["step"] == 5
        assert saves == [0, 5] and checkpoint.load(tmp_path / "run" / "last.pt")["step"] == 5
        assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored
    finally:
        signal.signal(signal.SIGINT, outside)


def test_sigterm_during_validation_keeps_that_validation_row(tmp_path, data, monkeypatch):
    config = tiny_config(data=data, steps=6, save_every=100, log_every=1, val_every=2)
    train(config, tmp_path / "full", progress=False)
    real = trainer.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the validation at step 4
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    part = train(config, tmp_path / "part", progress=False)
    assert part["signal"] == signal.SIGTERM and part["step"] == 4
    assert read_metrics(tmp_path / "part")[-1]["step"] == 4 and "val_metric" in read_metrics(tmp_path / "part")[-1]
    monkeypatch.undo()
    train(out=tmp_path / "part", resume=True, progress=False)
    assert log(tmp_path / "part") == log(tmp_path / "full")
    assert [s for s, _, v in log(tmp_path / "full") if v is not None] == [2, 4, 6]
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert_same_weights(weights(tmp_path / "full", "best.pt"), weights(tmp_path / "part", "best.pt"))


def test_time_limit_and_validation_target_are_normal_ends_that_say_so(tmp_path, data, capsys):
    limited = train(tiny_config(data=data, steps=50), tmp_path / "limited", progress=False, time_limit=1e-9)
    out = capsys.readouterr().out
    assert limited["reason"] == "time_limit" and limited["signal"] is None and limited["step"] == 1
    assert "stopped at step 1: the time limit" in out and "--resume" in out
    reached = train(tiny_config(data=data, steps=8, val_every=3, stop_at_val=0.0), tmp_path / "reached",
                    progress=False)
    assert reached["reason"] == "target" and reached["signal"] is None and not reached["stopped"]
    assert "stopped at step 3: validation accuracy reached 0.0" in capsys.readouterr().out


def test_a_run_started_with_init_and_killed_before_its_first_save_resumes_from_the_init_weights(tmp_path, data):
    train(tiny_config(data=data, steps=3), tmp_path / "source", progress=False)
    start = weights(tmp_path / "source")
    config = tiny_config(data=data, steps=4, meta_lr=0.0, init=str(tmp_path / "source" / "last.pt"))
    train(config, tmp_path / "run", progress=False, stop_after=1)
    (tmp_path / "run" / "last.pt").unlink()  # as if killed after config.yaml, before any checkpoint
    (tmp_path / "run" / "metrics.jsonl").unlink()
    train(out=tmp_path / "run", resume=True, progress=False)
    assert_same_weights(start, weights(tmp_path / "run"))  # meta_lr 0: still exactly the --init weights
    moving = tiny_config(data=data, steps=4, init=str(tmp_path / "source" / "last.pt"))
    train(moving, tmp_path / "full", progress=False)
    train(moving, tmp_path / "killed", progress=False, stop_after=1)
    (tmp_path / "killed" / "last.pt").unlink()
    train(out=tmp_path / "killed", resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "killed"))


def test_a_torn_last_metrics_line_is_skipped_with_a_warning(tmp_path, data, capsys):
    config = tiny_config(data=data, steps=6, save_every=2, log_every=1, val_every=100)
    train(config, tmp_path / "full", progress=False)
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after=4)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # the process died mid-line
    capsys.readouterr()
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert "metrics.jsonl line 5 is torn" in capsys.readouterr().err
    train(out=out, resume=True, progress=False)
    assert log(out) == log(tmp_path / "full")
    assert len((out / "metrics.csv").read_text().splitlines()) == 7
    assert "torn" not in capsys.readouterr().err.split("line 5 is torn")[-1]  # repaired once, not again


def test_a_damaged_config_yaml_is_one_error_and_changes_nothing(tmp_path, data):
    out = tmp_path / "run"
    train(tiny_config(data=data, steps=2), out, progress=False)
    for text in ("steps: [1\n", "just a string\n", "ways: many\n", "\x00\xff"):
        (out / "config.yaml").write_text(text)
        before = snapshot(out)
        with pytest.raises(FewshotError, match=r"config.yaml is damaged \(.+\); restore it"):
            train(out=out, resume=True, progress=False)
        assert snapshot(out) == before


def test_another_presets_checkpoint_in_the_run_folder_is_refused(tmp_path, data):
    train(tiny_config(data=data, steps=2), tmp_path / "ours", progress=False)
    protonet = tiny_config(data=data, steps=2, algorithm="protonet", head=False, preset="other", inner_steps=5,
                           inner_lr=0.4, eval_inner_steps=10)  # the defaults: ProtoNets read no inner steps
    train(protonet, tmp_path / "theirs", progress=False)
    (tmp_path / "ours" / "last.pt").write_bytes((tmp_path / "theirs" / "last.pt").read_bytes())
    before = snapshot(tmp_path / "ours")
    with pytest.raises(FewshotError, match=r"another run's checkpoint \(preset 'other', algorithm 'protonet'"):
        train(out=tmp_path / "ours", resume=True, progress=False)
    assert snapshot(tmp_path / "ours") == before


def test_a_folder_with_run_files_but_no_config_or_last_checkpoint_is_refused(tmp_path, data):
    train(tiny_config(data=data, steps=2), tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.yaml").unlink()
    (tmp_path / "run" / "last.pt").unlink()
    before = snapshot(tmp_path / "run")
    assert {"best.pt", "metrics.jsonl", "metrics.csv"} <= set(before)
    with pytest.raises(FewshotError, match=r"holds another run's files \(best.pt, metrics.jsonl, metrics.csv\)"):
        train(tiny_config(data=data, steps=2), tmp_path / "run", progress=False)
    with pytest.raises(FewshotError, match="holds run files .* but no config.yaml, so it cannot be resumed"):
        train(out=tmp_path / "run", resume=True, progress=False)
    assert snapshot(tmp_path / "run") == before


def test_a_failed_start_leaves_no_lock_and_no_empty_folders(tmp_path, data):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(FewshotError, match="neither a folder nor a dataset"):
        train(tiny_config(data=str(tmp_path / "missing")), out, progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(FewshotError):
        train(tiny_config(data=str(tmp_path / "missing")), tmp_path / "kept", progress=False)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["notes.txt"]
    train(tiny_config(data=data, steps=2), out, progress=False)  # the same folder works afterwards
    assert not (out / ".lock").exists() and checkpoint.load(out / "last.pt")["step"] == 2


def test_out_of_memory_at_the_first_step_is_one_line_naming_tasks_per_pass(tmp_path, data, monkeypatch):
    from fewshot.algorithms.maml import MAML

    def no_memory(self, tasks, step=0):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(MAML, "meta_gradient", no_memory)
    out = tmp_path / "run"
    with pytest.raises(FewshotError, match=r"^the meta-batch does not fit in the memory of cpu \(4 tasks per pass "
                                           r"at the first step\); set tasks_per_pass=2 "):
        train(tiny_config(data=data, meta_batch=4), out, progress=False)
    assert not out.exists()  # retried with tasks_per_pass, the command finds a clean slate
    monkeypatch.undo()
    assert train(tiny_config(data=data, meta_batch=4, steps=1), out, progress=False)["step"] == 1


def test_stale_temporary_files_and_a_dead_processs_lock_are_cleaned(tmp_path, data):
    out = tmp_path / "run"
    train(tiny_config(data=data, steps=4), out, progress=False, stop_after=2)
    (out / ".last.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    (out / ".lock").write_text("999999999")  # a killed process's lock: the file stays, its flock is gone
    train(out=out, resume=True, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    from fewshot.algorithms.maml import MAML
    real = MAML.meta_gradient

    def diverging(self, tasks, step=0):
        result = real(self, tasks, step)
        if step >= 2:  # from the third step on
            for p in self.parameters():
                p.grad = torch.full_like(p, float("nan"))
            result = {**result, "loss": torch.tensor(float("nan"))}
        return result
    monkeypatch.setattr(MAML, "meta_gradient", diverging)
    out = tmp_path / "run"
    with pytest.raises(FewshotError, match=r"^the meta-loss became non-finite at step 3; stopped without saving, so "
                                           r".*last.pt still holds step 2, the last good checkpoint; lower meta_lr"):
        train(tiny_config(data=data, steps=8, save_every=2, log_every=2, val_every=100), out, progress=False)
    state = checkpoint.load(out / "last.pt")
    assert state["step"] == 2 and all(torch.isfinite(w).all() for w in state["algorithm"].values())
    assert [r["step"] for r in read_metrics(out)] == [2]


def test_metrics_given_as_zero_dim_tensors_log_as_floats_do(tmp_path, data, monkeypatch):
    from fewshot.algorithms.maml import MAML
    config, real = tiny_config(data=data, steps=4, log_every=2, val_every=100), MAML.meta_gradient
    for kind, convert in (("floats", float), ("tensors", lambda v: torch.as_tensor(v).detach().reshape(()))):
        monkeypatch.setattr(MAML, "meta_gradient", lambda self, tasks, step=0, convert=convert: {
            k: convert(v) for k, v in real(self, tasks, step).items()})
        train(config, tmp_path / kind, progress=False)
    a, b = read_metrics(tmp_path / "floats"), read_metrics(tmp_path / "tensors")
    assert [(r["step"], r["loss"], r["metric"]) for r in a] == [(r["step"], r["loss"], r["metric"]) for r in b]
    assert all(isinstance(r["loss"], float) for r in b)


def test_the_log_shows_peak_memory(tmp_path, data, capsys):
    train(tiny_config(data=data, steps=2, log_every=1), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    peak_now = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                        if line.startswith("VmHWM")).split()[1]) / 1024
    assert all(50 < r["peak_rss_mb"] <= peak_now + 0.1 for r in rows)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert len(lines) == 2 and all(f"peak {r['peak_rss_mb']:.0f} MB RSS" in line for r, line in zip(rows, lines))
    assert "peak_rss_mb" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_piped_output_has_one_line_per_log_row_and_no_bar_frames(tmp_path, data):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fewshot", "train", "omniglot-5w1s", "--data", data, "--out", str(out),
               "--threads", "1", *sum((["--set", f"{k}={v}"] for k, v in dict(
                   ways=3, query=1, filters=4, image_size=16, meta_batch=2, steps=6, log_every=2, val_every=3,
                   val_tasks=2, downsample="maxpool").items()), [])]
    # bytes, not text=True: universal newlines would turn the bar's \r into \n
    done = subprocess.run(command, capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stdout and b"\r" not in done.stderr and done.stderr == b""
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    lines = done.stdout.decode().split("\n")[:-1]
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["2", "3", "4", "6"]
    assert lines[-1].startswith("done: 6 steps") and len(lines) == 5
    # eval's task bar is left out off a terminal too: only the result line
    done = subprocess.run([sys.executable, "-m", "fewshot", "eval", str(out), "--tasks", "20", "--threads", "1"],
                          capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr and done.stderr == b"" and len(done.stdout.decode().splitlines()) == 1


# kill -9 ---------------------------------------------------------------------------------------------

def _in_child(function):
    """Run function() in a forked copy of this process (torch already loaded: no start-up cost); return its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")
            function()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_kill_9_at_random_moments_then_resume_ends_bitwise_equal(tmp_path, data):
    config = tiny_config(data=data, steps=8, save_every=1, log_every=1, val_every=3)
    started = time.perf_counter()
    train(config, tmp_path / "full", progress=False)
    duration = time.perf_counter() - started
    chance, landed = random.Random(12), []
    for run in range(10):
        out, kills = tmp_path / f"run{run}", 0
        while kills < 2:  # two kills per run, each at a random moment of what is left
            resume = (out / "config.yaml").exists()
            pid = _in_child(lambda: train(out=out, resume=True, progress=False) if resume else
                            train(config, out, progress=False))
            time.sleep(chance.uniform(0, 1.2 * duration))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            kills += 1
            for name in ("last.pt", "best.pt"):
                if (out / name).exists():
                    state = checkpoint.load(out / name)  # never torn
                    if name == "last.pt":
                        landed.append(state["step"])
        if (out / "config.yaml").exists():
            train(out=out, resume=True, progress=False)
        else:
            train(config, out, progress=False)
        assert_same_weights(weights(tmp_path / "full"), weights(out))
        assert log(out) == log(tmp_path / "full"), run
        assert not list(out.glob(".*"))
    assert any(0 < step < 8 for step in landed), landed  # some kills landed mid-training, not only before or after


def test_a_double_sigterm_to_a_training_process_loses_nothing(tmp_path, data):
    config = tiny_config(data=data, steps=10 ** 6, save_every=10 ** 6, log_every=50, val_every=10 ** 6)
    out = tmp_path / "run"
    pid = _in_child(lambda: os._exit(128 + train(config, out, progress=False)["signal"]))
    deadline = time.monotonic() + 120
    while not read_metrics(out) and time.monotonic() < deadline:  # trained past step 50
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 143
    state = checkpoint.load(out / "last.pt")
    assert state["step"] >= 50 and state["step"] >= read_metrics(out)[-1]["step"]
    assert not (out / ".lock").exists()


def test_sigterm_to_the_parent_of_a_two_process_run_saves_and_resumes_bitwise(tmp_path, data):
    # what `kill PID`, a scheduler or `timeout` sends to `fewshot train --procs 2`
    sets = dict(steps=150, save_every=1000, log_every=1, val_every=50, val_tasks=2, ways=3, query=2, filters=4,
                image_size=16, meta_batch=2)
    argv = ["train", "omniglot-5w1s", "--data", data, "--threads", "1", "--procs", "2",
            *sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "part"
    process = subprocess.Popen([sys.executable, "-m", "fewshot", *argv, "--out", str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(read_metrics(out)) < 3:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # the parent only
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    text = (stdout + stderr).decode()
    assert process.returncode == 143 and "Traceback" not in text, text
    stopped = checkpoint.load(out / "last.pt")["step"]
    assert 3 <= stopped < 150 and "by SIGTERM; saved" in text, text
    assert [r["step"] for r in read_metrics(out)] == list(range(1, stopped + 1))
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))
    done = subprocess.run([sys.executable, "-m", "fewshot", "train", "--resume", str(out), "--procs", "2",
                           "--threads", "1"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    subprocess.run([sys.executable, "-m", "fewshot", *argv, "--out", str(tmp_path / "full")], env=env,
                   capture_output=True, timeout=300, check=True)  # the same run, never interrupted
    assert_same_weights(weights(tmp_path / "full"), weights(out))
    assert log(tmp_path / "full") == log(out) and len(log(out)) == 150


def test_leos_non_finite_meta_batches_are_counted_not_fatal(tmp_path, monkeypatch):
    from algorithms.test_leo import DIM, leo_config
    from data.test_embeddings import write_synthetic
    from fewshot.algorithms.leo import LEO
    write_synthetic(tmp_path / "embeddings" / "miniImageNet" / "center", dim=DIM, per_class=8, spread=0.3)
    real = LEO.meta_gradient

    def overflowing(self, tasks, step=0):
        result = real(self, tasks, step)
        return {**result, "loss": torch.tensor(float("nan"))} if step == 1 else result  # as an overflow reports it
    monkeypatch.setattr(LEO, "meta_gradient", overflowing)
    config = leo_config(data=str(tmp_path / "embeddings"), embedding_dataset="miniImageNet", steps=4, log_every=2,
                        val_every=100, val_tasks=2)
    result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == 4 and not result["stopped"]
    assert [(r["step"], r["nonfinite_steps"]) for r in read_metrics(tmp_path / "run")] == [(2, 1), (4, 0)]


def test_a_csv_cut_short_of_the_jsonl_is_completed_on_resume(tmp_path, data):
    config = tiny_config(data=data, steps=6, save_every=2, log_every=1, val_every=100)
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after=4)
    lines = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(lines[:-1]) + "\n")  # killed between the jsonl and the csv write
    train(out=out, resume=True, progress=False)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]


def test_the_metrics_are_read_once_per_log_row_not_per_step(tmp_path, data, monkeypatch):
    reads, real = [], trainer._host
    monkeypatch.setattr(trainer, "_host", lambda values: reads.append(len(values)) or real(values))
    train(tiny_config(data=data, steps=10, log_every=5, save_every=100, val_every=100), tmp_path / "run",
          progress=False)
    assert reads == [10, 10]  # two rows: loss and accuracy of 5 steps each, in one read per row


def test_a_run_with_episodes_built_on_the_device_equals_the_host_run(tmp_path, data, monkeypatch):
    # the CUDA path (plans drawn on the prefetch thread, tasks built by DeviceEpisodes in the
    # training loop, validation from the same device copy), run here on the CPU
    from fewshot.data.episodes import DeviceEpisodes
    config = tiny_config(data=data, steps=4, log_every=2, val_every=2, batch_norm="inductive")
    train(config, tmp_path / "host", progress=False)
    import threading
    built, real = [], DeviceEpisodes.build
    monkeypatch.setattr(DeviceEpisodes, "build", lambda self, plans: built.append(
        (len(plans), threading.current_thread() is threading.main_thread())) or real(self, plans))
    monkeypatch.setattr(trainer, "EPISODES_ON_DEVICE", ("cuda", "cpu"))
    train(config, tmp_path / "device", progress=False)
    # 4 meta-batches of 2 built in the training loop (the host path builds them on the prefetch
    # thread), and 2 validations of 3 tasks
    assert sorted(built) == [(1, True)] * 6 + [(2, True)] * 4
    assert_same_weights(weights(tmp_path / "host"), weights(tmp_path / "device"))
    assert log(tmp_path / "host") == log(tmp_path / "device")


def test_the_shared_loop_finishes_a_critical_section_before_a_signal_stops_it_and_saves_once():
    # the loop meta-training and embed's pretraining both run through
    from fewshot.loop import Loop
    saved, done = [], []

    def one_step():
        with loop.signals:
            loop.advance()
            if loop.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the section: the step still completes
            done.append(loop.step)

    loop = Loop(0, 10, lambda: saved.append(loop.step), desc="test", progress=False)
    ended = loop.run(one_step)
    assert ended == {"step": 2, "reason": "signal", "stopped": True, "signal": int(signal.SIGTERM)}
    assert done == [1, 2] and saved == [2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_run_started_ignoring_sigint_keeps_ignoring_it(tmp_path, data):
    """`nohup fewshot train ... &` from a script starts with SIGINT ignored, so that a
    Ctrl-C at the terminal leaves it running: the trainer keeps that (SIGTERM still stops it)."""
    config = tiny_config(data=data, steps=10 ** 6, save_every=10 ** 6, log_every=50, val_every=10 ** 6)
    out = tmp_path / "run"

    def ignoring_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os._exit(128 + train(config, out, progress=False)["signal"])
    pid = _in_child(ignoring_sigint)
    deadline = time.monotonic() + 120
    while not read_metrics(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0), "SIGINT stopped a run started ignoring it"
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 143
    assert checkpoint.load(out / "last.pt")["step"] >= 50
