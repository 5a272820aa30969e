"""Run folders: the data's location recorded with a run, so `fewshot eval RUN` finds the
dataset from another folder or with another FEWSHOT_HOME, or says what to set."""
import os
import shutil

import pytest

from fewshot import checkpoint
from fewshot.errors import FewshotError
from fewshot.evaluate import evaluate_checkpoint
from fewshot.runs import MetricsLog, read_metrics
from fewshot.train import train

from helpers import tagged_dataset, tiny_config


def score(run):
    result = evaluate_checkpoint(run, tasks=3, progress=False)
    return result["mean"], result["scores"]


def run_on_a_named_dataset(tmp_path, monkeypatch, home):
    """A 2-step run on dataset "mine" under FEWSHOT_HOME=tmp_path/home: (run folder, its score)."""
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / home))
    tagged_dataset(tmp_path / home / "mine", classes=80)
    run = tmp_path / "run"
    train(tiny_config(data="mine", steps=2), run, progress=False)
    return run, score(run)


def test_a_run_on_a_dataset_named_under_fewshot_home_evaluates_with_another_fewshot_home(tmp_path, monkeypatch):
    run, there = run_on_a_named_dataset(tmp_path, monkeypatch, "home-a")
    location = checkpoint.load(run / "best.pt")["data_location"]
    assert location == {"data": "mine", "path": str((tmp_path / "home-a" / "mine").resolve()),
                        "fewshot_home": str(tmp_path / "home-a")}
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / "home-b"))  # "mine" names nothing here
    assert score(run) == there
    # the data gone too: one line that names the FEWSHOT_HOME it was under and --data
    shutil.move(tmp_path / "home-a", tmp_path / "elsewhere")
    with pytest.raises(FewshotError, match=rf"'mine', is not found from here: .*set FEWSHOT_HOME="
                                           rf"{tmp_path / 'home-a'} .* --data PATH"):
        evaluate_checkpoint(run, tasks=3, progress=False)
    # --data still overrides
    assert evaluate_checkpoint(run, tasks=3, progress=False, data_spec=tmp_path / "elsewhere" / "mine")["mean"] == there[0]


def test_a_run_on_a_relative_data_path_evaluates_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    tagged_dataset(tmp_path / "a" / "data", classes=80)
    monkeypatch.chdir(tmp_path / "a")
    train(tiny_config(data="data", steps=2), tmp_path / "run", progress=False)
    here = score(tmp_path / "run")
    os.mkdir(tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")  # "data" names nothing from here
    assert score(tmp_path / "run") == here


def test_the_config_names_data_first_where_it_still_resolves(tmp_path, monkeypatch):
    # the run's own `data` wins where it names something from here: a copy moved into place is used
    run, there = run_on_a_named_dataset(tmp_path, monkeypatch, "home")
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / "other"))
    shutil.move(tmp_path / "home", tmp_path / "other")
    assert score(run) == there


def test_the_metrics_log_rewinds_to_the_checkpoints_step(tmp_path):
    log = MetricsLog(tmp_path, 0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float(step)})
    MetricsLog(tmp_path, 2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == ["1,1.0" + "," * 12, "2,2.0" + "," * 12]


def test_checkpoints_write_the_users_home_folder_as_a_tilde(tmp_path, monkeypatch):
    """A run folder kept in a repository names no machine's home; it reads back as before."""
    from fewshot.runs import portable
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert portable(tmp_path / "user" / ".cache" / "fewshot") == "~/.cache/fewshot"
    assert portable(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
    run, there = run_on_a_named_dataset(tmp_path / "user", monkeypatch, "home-a")
    location = checkpoint.load(run / "best.pt")["data_location"]
    assert location == {"data": "mine", "path": "~/home-a/mine", "fewshot_home": "~/home-a"}
    assert str(tmp_path) not in (run / "best.pt").read_bytes().decode("latin-1")
    monkeypatch.setenv("FEWSHOT_HOME", str(tmp_path / "home-b"))  # "mine" names nothing here: the ~ path does
    assert score(run) == there


def test_training_time_sums_each_process_by_its_start_mark_even_when_a_resume_runs_slower():
    """A resumed process whose clock at its first row is past the previous one's last row is
    still a new process: its rows carry its start time. Old rows without it: a clock going back."""
    from fewshot.runs import cumulative_seconds
    rows = [{"step": 2, "elapsed_s": 5.0, "process_started": 100.0},
            {"step": 4, "elapsed_s": 9.0, "process_started": 200.0},  # slower after the resume: 9 > 5
            {"step": 6, "elapsed_s": 12.0, "process_started": 200.0}]
    assert [(seconds, processes) for _, seconds, processes in cumulative_seconds(rows)] == \
        [(5.0, 1), (14.0, 2), (17.0, 2)]
    old = [{"step": 2, "elapsed_s": 5.0}, {"step": 4, "elapsed_s": 3.0}, {"step": 5, "loss": 1.0},
           {"step": 6, "elapsed_s": 7.0}]
    assert [(seconds, processes) for _, seconds, processes in cumulative_seconds(old)] == \
        [(5.0, 1), (8.0, 2), (12.0, 2)]
