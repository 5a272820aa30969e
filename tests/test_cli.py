"""The command line as a user meets it: real Omniglot, a few steps, and every bad input (the bad
inputs on a small dataset built here, so they run without the shared data)."""
import json
import math
import re

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


def test_a_data_path_is_recorded_absolute_with_home_as_a_tilde_and_resumes_from_elsewhere(
        tmp_path, capsys, monkeypatch):
    """config.yaml names the data so that the run resumes from any folder, and names no
    machine's home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    tagged_dataset(tmp_path / "datasets" / "small", classes=80, size=28)
    monkeypatch.chdir(tmp_path / "datasets")
    out = train_fast(capsys, "small", tmp_path / "run")
    assert "data: ~/datasets/small\n" in (out / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path / "run")
    code, stdout, err = run(capsys, "train", "--resume", out, "--steps", "6", "--no-progress")
    assert code == 0 and "done: 6 steps" in stdout, err


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
    assert code == 2 and "drop PRESET, --data and --init" in one_error_line(err)
    code, _, err = run(capsys, "train", "--resume", trained, "--set", "inner_lr=0.5", "--no-progress")
    assert code == 2 and "inner_lr would make it another run" in one_error_line(err)
    code, _, err = run(capsys, "train", "omniglot-20w1s", "--data", small_data, "--init", trained, "--out",
                       tmp_path / "transfer", *FAST)
    assert code == 2 and "does not fit this run" in one_error_line(err) and not (tmp_path / "transfer").exists()
    after = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != ".lock"}
    before.pop(".lock", None)
    assert before == after  # nothing that existed was damaged


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["presets"], ["train", "--help"]])
def test_help_presets_and_version_do_not_import_torch(argv):
    """The lean CLI: these answer without loading torch (measured CPU time: README). Not
    `presets --keys`: the readers it prints are the algorithms' and backbones' own declarations."""
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
    (["train", "omniglot-5w1s", "--out", "X", "--steps", "6"], "--steps goes with --resume (it extends a run)"),
    (["train", "--resume", "X", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["train", "omniglot-5w1s", "--out", "X", "--set", "msl_epochs=2"], "msl_epochs: 2 would be ignored"),
    (["train", "mamlpp-omniglot-5w1s", "--out", "X", "--set", "model=resnet12"], "per_step_bn: true would be ignored"),
    (["train", "omniglot-5w1s", "--out", "X", "--set", "algorithm=protonet"], "has no head"),
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


def test_resume_with_set_changes_how_a_step_is_computed_and_records_it(small_run, capsys):
    code, stdout, _ = run(capsys, "train", "--resume", small_run, "--steps", "5", "--set", "batch_tasks=true",
                          "--threads", "1", "--no-progress")
    assert code == 0 and "steps 4 -> 5; batch_tasks null -> true" in stdout and "done: 5 steps" in stdout
    from fewshot import checkpoint
    assert checkpoint.load(small_run / "last.pt")["config"].batch_tasks is True
    assert "batch_tasks: true" in (small_run / "config.yaml").read_text().splitlines()


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


# --- the device: the best one present, said; checked once, in the library ------------------------------

@pytest.fixture
def stand_in_gpu(monkeypatch):
    """torch sees one CUDA device (a stand-in: only the device check is replaced)."""
    monkeypatch.delenv("FEWSHOT_DEVICE")  # no default device asked for: the best one present
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Stand-in GPU")


@pytest.fixture
def calls_to_train(monkeypatch):
    """fewshot.train.train replaced by a recorder: what the CLI asks of the library."""
    import fewshot.train
    calls = []

    def recorder(config=None, out=None, **options):
        calls.append(options)
        return {"out": str(out), "step": 4, "best": None, "stopped": False, "reason": None, "signal": None}
    monkeypatch.setattr(fewshot.train, "train", recorder)
    return calls


def test_train_uses_the_gpu_torch_sees_without_a_flag_and_says_so(tmp_path, stand_in_gpu, calls_to_train, capsys):
    code, out, _ = run(capsys, "train", "omniglot-5w1s", "--out", tmp_path / "run", "--no-progress")
    assert code == 0 and calls_to_train[0]["device"] == "cuda"
    assert out.splitlines()[0].startswith("device: cuda (Stand-in GPU), the best present")
    code, out, _ = run(capsys, "train", "omniglot-5w1s", "--out", tmp_path / "run", "--device", "cpu", "--no-progress")
    assert code == 0 and calls_to_train[1]["device"] == "cpu" and "device:" not in out  # asked for: nothing to say


def test_without_cuda_mps_is_chosen_where_it_runs_a_meta_step_else_the_cpu(monkeypatch):
    from fewshot import device
    monkeypatch.delenv("FEWSHOT_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.choose_device() == (torch.device("cpu"), None)  # a CPU machine: nothing to say
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(device, "mps_runs_meta_steps", lambda: None)
    chosen, line = device.choose_device()
    assert chosen == torch.device("mps") and line.startswith("device: mps")
    monkeypatch.setattr(device, "mps_runs_meta_steps", lambda: "aten::foo is not implemented for MPS")
    chosen, line = device.choose_device()
    assert chosen == torch.device("cpu") and "MPS is present" in line and "aten::foo" in line


def test_the_mps_check_runs_the_operations_of_a_meta_step():
    """Here there is no MPS: the check's second-order convolution fails, and it says why."""
    from fewshot.device import mps_runs_meta_steps
    if torch.backends.mps.is_available():
        assert mps_runs_meta_steps() is None
    else:
        assert mps_runs_meta_steps()


def test_fewshot_device_sets_the_device_a_command_takes_without_the_flag(tmp_path, stand_in_gpu, calls_to_train,
                                                                        monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_DEVICE", "cpu")
    code, out, _ = run(capsys, "train", "omniglot-5w1s", "--out", tmp_path / "run", "--no-progress")
    assert code == 0 and calls_to_train[0]["device"] == "cpu" and "device:" not in out  # asked for: nothing to say
    code, out, _ = run(capsys, "train", "omniglot-5w1s", "--out", tmp_path / "run", "--device", "cuda",
                       "--no-progress")
    assert code == 0 and calls_to_train[1]["device"] == "cuda"  # the flag, where given, decides
    monkeypatch.setenv("FEWSHOT_DEVICE", "gpu")
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and one_error_line(err) == ("fewshot: error: FEWSHOT_DEVICE='gpu': --device 'gpu' is not a "
                                                 "device; use cpu, cuda, cuda:N or mps")


@pytest.mark.parametrize("name,message", [
    ("gpu0", "--device 'gpu0' is not a device; use cpu, cuda, cuda:N or mps"),
    ("cuda:1", "--device cuda:1: this machine has 1 CUDA device(s); use cuda:0 to cuda:0"),
])
def test_a_device_this_machine_lacks_is_one_line_from_the_library(tmp_path, stand_in_gpu, capsys, name, message):
    from fewshot.device import choose_device
    from fewshot.errors import FewshotError
    with pytest.raises(FewshotError) as refused:
        choose_device(name)
    assert str(refused.value) == message
    for argv in (["train", "omniglot-5w1s", "--out", tmp_path / "run"], ["eval", tmp_path / "run"],
                 ["predict", tmp_path / "run", "--support", tmp_path, "--query", tmp_path]):
        code, _, err = run(capsys, *argv, "--device", name)
        assert code == 2 and one_error_line(err) == f"fewshot: error: {message}"
    assert not (tmp_path / "run").exists()


def test_the_device_help_lists_the_accepted_names(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("cpu, cuda, cuda:N or mps (default: $FEWSHOT_DEVICE where set, else the best device present: CUDA, "
            "then MPS, then the CPU") in text


@pytest.mark.parametrize("call,message", [
    ("train", "--procs must be at least 1, got 0"),
    ("threads", "--threads must be at least 1, got 0"),
    ("resume-steps", "--steps must be at least 1, got 0"),
    ("eval", "--inner-steps must be at least 0, got -1"),
    ("eval-tasks", "--tasks must be at least 1, got 0"),
    ("eval-seed", "--seed must be at least 0, got -5"),
    ("embed", "--pretrain-steps must be at least 1, got 0"),
])
def test_the_library_checks_the_numbers_the_cli_passes_in_the_clis_words(tmp_path, call, message):
    """The CLI checks none of these itself: the library's line is the one a user sees."""
    from fewshot.embed import embed
    from fewshot.errors import FewshotError
    from fewshot.evaluate import evaluate_checkpoint
    from fewshot.train import train
    from helpers import tiny_config
    calls = {"train": lambda: train(tiny_config(), tmp_path / "run", procs=0),
             "threads": lambda: train(tiny_config(), tmp_path / "run", threads=0),
             "resume-steps": lambda: train(out=tmp_path / "run", resume=True, steps=0),
             "eval": lambda: evaluate_checkpoint(tmp_path / "run", steps=-1),
             "eval-tasks": lambda: evaluate_checkpoint(tmp_path / "run", tasks=0),
             "eval-seed": lambda: evaluate_checkpoint(tmp_path / "run", seed=-5),
             "embed": lambda: embed(tiny_config(), tmp_path / "run", steps=0)}
    with pytest.raises(FewshotError, match=re.escape(message)):
        calls[call]()
    assert not (tmp_path / "run").exists()


# --- one meaning per flag name ----------------------------------------------------------------------------

def commands():
    """{command: its argparse parser}, every subcommand of `fewshot`."""
    import argparse
    from fewshot.cli import parser
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_each_flag_name_has_one_meaning_across_commands():
    """A flag several commands take is defined once (cli.SHARED): its help begins with that one
    meaning, and a command may only say what it names there. A flag one command takes is its own."""
    import argparse
    from fewshot.cli import SHARED
    helps = {}
    for name, command in commands().items():
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                helps.setdefault(flag, {})[name] = action.help
    shared = {flag: by_command for flag, by_command in helps.items() if len(by_command) > 1}
    assert {"--data", "--device", "--threads", "--out", "--seed", "--inner-steps"} <= set(shared)
    for flag, by_command in shared.items():
        assert flag in SHARED, f"{flag} is defined separately by {sorted(by_command)}"
        for name, text in by_command.items():
            assert text.startswith(SHARED[flag]["help"]), (flag, name, text)
            rest = text[len(SHARED[flag]["help"]):]
            assert rest == "" or rest[0] in ":;( ", (flag, name, rest)  # details, never a new meaning
    # the meanings that used to share a name have names of their own
    assert helps["--steps"].keys() == {"train"} and "meta-step" in helps["--steps"]["train"]
    assert helps["--pretrain-steps"].keys() == {"embed"} and helps["--lr"].keys() == {"embed"}
    assert helps["--ratios"].keys() == {"data"} and helps["--classes"].keys() == {"eval"}
    assert "--split" not in helps  # the config key `split` (maml | lake) keeps the word to itself


@pytest.mark.parametrize("argv,line", [
    (["eval", "RUN", "--steps", "3"], "eval --steps is now --inner-steps"),
    (["predict", "RUN", "--support", "S", "--query", "Q", "--steps", "0"], "predict --steps is now --inner-steps"),
    (["embed", "omniglot-5w1s", "--out", "E", "--steps", "5"], "embed --steps is now --pretrain-steps"),
    (["eval", "RUN", "--split", "val"], "eval --split is now --classes (test, val or train)"),
    (["data", "folder", "--from", "D", "--name", "x", "--split", "0.5,0.25,0.25"],
     "data --split is now --ratios (the share of the classes in train, val and test)"),
])
def test_an_old_spelling_whose_meaning_moved_gets_one_line_naming_the_new_flag(tmp_path, capsys, argv, line):
    argv = [str(tmp_path / a) if a in ("RUN", "S", "Q", "E", "D") else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and one_error_line(err) == f"fewshot: error: {line}"
    assert list(tmp_path.iterdir()) == []


# --- eval: the inner learning rate, and what adapting did ---------------------------------------------------

def test_eval_inner_lr_reaches_the_inner_loop(small_run, capsys):
    def score(*options):
        code, out, _ = run(capsys, "eval", small_run, "--tasks", "6", "--json", "--device", "cpu", *options)
        assert code == 0
        return json.loads(out)
    without = score("--inner-steps", "0")
    still = score("--inner-steps", "3", "--inner-lr", "0")  # steps of size 0 change nothing
    moved = score("--inner-steps", "3", "--inner-lr", "0.5")
    assert still["mean"] == without["mean"] and still["inner_lr"] == 0
    assert moved["inner_lr"] == 0.5 and moved["adaptation"] == "3 inner steps at lr 0.5" and moved["device"] == "cpu"
    code, out, _ = run(capsys, "eval", small_run, "--tasks", "6", "--inner-steps", "2", "--inner-lr", "0.25",
                       "--device", "cpu")
    assert code == 0 and "2 inner steps at lr 0.25)" in out


def test_eval_of_protonets_says_what_was_done_instead_of_an_inner_loop(tmp_path, small_data, capsys):
    code, _, _ = run(capsys, "train", "protonet-omniglot-5w1s", "--data", small_data, "--out", tmp_path / "proto",
                     "--set", "ways=5", "--set", "eval_query=3", *FAST)
    assert code == 0
    code, out, _ = run(capsys, "eval", tmp_path / "proto", "--tasks", "4", "--no-progress", "--device", "cpu")
    assert code == 0 and "no inner loop: each query takes the class of the nearest prototype" in out
    assert "inner steps" not in out and "lr none" not in out


# --- embed names the LEO preset for the files it wrote ----------------------------------------------------

@pytest.mark.parametrize("dataset,dim,presets,set_dim", [
    ("omniglot", 64, ["leo-omniglot-5w1s"], False),
    ("miniimagenet", 800, ["leo-miniimagenet-conv4-5w1s", "leo-miniimagenet-conv4-5w5s"], False),
    ("miniimagenet", 640, ["leo-miniimagenet-conv4-5w1s", "leo-miniimagenet-conv4-5w5s"], True),  # --backbone
    ("folder", 64, ["leo-omniglot-5w1s"], False),  # a user's images through omniglot-5w1s's conv4
])
def test_the_leo_preset_for_embeddings_follows_from_the_presets(dataset, dim, presets, set_dim):
    from fewshot.embed import leo_presets
    assert leo_presets(dataset, dim) == {"presets": presets, "set_dim": set_dim}
