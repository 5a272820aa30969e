import json
import math

import pytest
import torch

from fewshot import algorithms, checkpoint
from fewshot.errors import FewshotError
from fewshot.optim import clip_gradients
from fewshot.runs import RunLock
from fewshot.train import _host, _row, initial_weights, train

from helpers import tagged_dataset, tiny_config


@pytest.fixture
def data(tmp_path):
    return str(tagged_dataset(tmp_path / "data", classes=80))


def weights(out):
    return checkpoint.load(out / "last.pt")["algorithm"]


@pytest.mark.parametrize("batch_norm", ["transductive", "inductive"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, data, batch_norm):
    config = tiny_config(data=data, steps=7, save_every=2, val_every=3, lr_decay_every=2,
                         lr_decay_gamma=0.5, batch_norm=batch_norm)
    full = train(config, tmp_path / "full", progress=False)
    assert not full["stopped"] and full["step"] == 7
    part = train(config, tmp_path / "part", progress=False, stop_after=4)
    assert part["stopped"] and part["step"] == 4
    assert checkpoint.load(tmp_path / "part" / "last.pt")["step"] == 4
    resumed = train(out=tmp_path / "part", resume=True, progress=False)
    assert resumed["step"] == 7
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = lambda out: [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "full") == rows(tmp_path / "part")


def test_resume_from_an_older_checkpoint_rewinds_the_log(tmp_path, data):
    config = tiny_config(data=data, steps=6, save_every=2, val_every=100, log_every=1)
    out = tmp_path / "run"
    train(config, out, progress=False, stop_after=4)
    older = checkpoint.load(out / "last.pt")
    assert older["step"] == 4
    # as if the process died at step 5, after logging but before saving
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 9.0, "metric": 0.0}) + "\n")
    train(out=out, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    header = (out / "metrics.csv").read_text().splitlines()
    assert header[0].startswith("step,loss,metric") and len(header) == 7


def test_the_log_holds_speed_and_validation_columns(tmp_path, data):
    out = tmp_path / "run"
    train(tiny_config(data=data, steps=4, log_every=2, val_every=4), out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss", "metric", "sec_per_step", "tasks_per_s", "images_per_s", "lr"):
        assert rows[-1][key] > 0
    assert 0 <= rows[-1]["val_metric"] <= 1 and "val_metric" not in rows[0]
    assert (out / "best.pt").is_file() and (out / "config.yaml").is_file()


def test_a_run_folder_is_never_reused_or_shared(tmp_path, data):
    config = tiny_config(data=data, steps=2)
    out = tmp_path / "run"
    train(config, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FewshotError, match="already holds a run"):
        train(config, out, progress=False)
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    lock = RunLock(out)  # another process is training here
    try:
        with pytest.raises(FewshotError, match="in use by another fewshot process"):
            train(out=out, resume=True, progress=False)
    finally:
        lock.release()


def test_the_python_api_takes_a_checked_dict_and_refuses_no_config(tmp_path, data):
    values = tiny_config(data=data, steps=1).to_dict()
    assert train(values, tmp_path / "from-a-dict", progress=False)["step"] == 1
    with pytest.raises(FewshotError, match="inner_lr must be a finite number"):
        train({**values, "inner_lr": float("nan")}, tmp_path / "nan", progress=False)
    with pytest.raises(FewshotError, match=r"^train\(\) needs a config"):
        train(out=tmp_path / "none", progress=False)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "none").exists()


def test_training_improves_on_real_omniglot(tmp_path, omniglot_cache):
    config = tiny_config(data=str(omniglot_cache), image_size=28, ways=5, query=3, filters=16,
                         downsample="stride", inner_lr=0.4, meta_batch=8, steps=40, val_every=40,
                         log_every=10, val_tasks=40, seed=1, meta_lr=0.003)
    train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["val_metric"] > 0.4  # chance is 0.2


def test_a_run_stops_once_validation_reaches_the_target(tmp_path, data):
    result = train(tiny_config(data=data, steps=8, val_every=3, stop_at_val=0.0), tmp_path / "run", progress=False)
    assert result["step"] == 3 and not result["stopped"]
    assert checkpoint.load(tmp_path / "run" / "last.pt")["step"] == 3


def test_init_starts_from_another_runs_weights_with_a_fresh_optimizer(tmp_path, data):
    source = train(tiny_config(data=data, steps=3), tmp_path / "source", progress=False)
    start = weights(tmp_path / "source")
    # meta_lr 0: the new run's weights stay exactly those it started from
    frozen = train(tiny_config(data=data, steps=2, meta_lr=0.0, init=str(tmp_path / "source" / "last.pt")),
                   tmp_path / "frozen", progress=False)
    assert frozen["step"] == 2
    assert all(torch.equal(start[n], weights(tmp_path / "frozen")[n]) for n in start)
    train(tiny_config(data=data, steps=2, meta_lr=0.0), tmp_path / "fresh", progress=False)
    assert not torch.equal(start["model.head.weight"], weights(tmp_path / "fresh")["model.head.weight"])
    moved = checkpoint.load(train(tiny_config(data=data, steps=2, init=source["out"]), tmp_path / "moved",
                                  progress=False)["out"] + "/last.pt")
    assert moved["step"] == 2 and moved["optimizer"]["state"][0]["step"] == 2  # Adam restarted at step 0


def test_init_into_reptile_with_adam_takes_the_weights_and_starts_the_inner_adam_afresh(tmp_path, data):
    reptile = dict(algorithm="reptile", inner_optimizer="adam", meta_optimizer="sgd", meta_lr=0.0, inner_lr=0.01)
    train(tiny_config(data=data, steps=2, **reptile), tmp_path / "source", progress=False)
    source = checkpoint.load(tmp_path / "source" / "last.pt")["algorithm"]
    assert any(source[n].abs().sum() > 0 for n in source if n.startswith("inner_adam.") and n != "inner_adam.step")
    config = tiny_config(data=data, init=str(tmp_path / "source" / "last.pt"), **reptile)
    weights = initial_weights(config)
    assert not any(n.startswith("inner_adam.") for n in weights)
    algorithm = algorithms.build(config)
    algorithm.load_state_dict(weights)
    for name, value in algorithm.state_dict().items():
        if name.startswith("inner_adam."):
            assert value.abs().sum() == 0, name  # the inner Adam's moments start afresh
        else:
            assert torch.equal(value, source[name]), name
    # and a run started that way trains
    assert train(config, tmp_path / "moved", progress=False)["step"] == config.steps


def test_init_from_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, data):
    train(tiny_config(data=data, steps=1), tmp_path / "source", progress=False)
    with pytest.raises(FewshotError, match=r"model.head.weight is \(3, .*\) there, \(4, .*\) here"):
        train(tiny_config(data=data, ways=4, init=str(tmp_path / "source")), tmp_path / "other", progress=False)
    with pytest.raises(FewshotError, match="not a fewshot checkpoint|truncated|refused"):
        (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
        train(tiny_config(data=data, init=str(tmp_path / "foreign.pt")), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_gradients_are_clipped_by_value_then_each_tensor_by_its_own_norm():
    small, large = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    small.grad, large.grad = torch.tensor([0.03, 0.04]), torch.tensor([3.0, -4.0, 12.0])
    clip_gradients([small, large], value=5.0, norm=1.0)
    torch.testing.assert_close(small.grad, torch.tensor([0.03, 0.04]))  # norm 0.05: untouched
    torch.testing.assert_close(large.grad, torch.tensor([3.0, -4.0, 5.0]) / (50 ** 0.5))  # clamped, then norm 1
    clip_gradients([small, large])
    torch.testing.assert_close(small.grad, torch.tensor([0.03, 0.04]))


def test_log_means_leave_out_non_finite_steps():
    """The trainer's log row (`_row`, of the values `_host` reads back from the step results)."""
    row = lambda losses, metrics: _row(10, losses, metrics, 1.0, (1.0, 0.0), 0.1, 2, 4, torch.device("cpu"))
    logged = row([1.0, float("nan"), 3.0], [0.5, float("nan"), 0.7])
    assert (logged["loss"], logged["metric"], logged["nonfinite_steps"]) == (2.0, 0.6, 1)
    assert math.isnan(row([float("nan")], [float("nan")])["loss"])  # all non-finite: nan
    read = _host([torch.tensor(1.0), 2.0, torch.tensor(float("inf"))])
    assert read[:2] == [1.0, 2.0] and math.isinf(read[2])
    assert row(read, read)["loss"] == 1.5


def metric_rows(out):
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("stop_after", [None, 2])
def test_extending_a_4_step_run_to_6_equals_an_uninterrupted_6_step_run(tmp_path, data, capsys, stop_after):
    # a schedule that does not depend on `steps` (step decay) and tasks that are a function of (seed, step):
    # the extended run must end bitwise where an uninterrupted 6-step run ends, finished at 4 or stopped at 2
    settings = dict(data=data, save_every=2, log_every=1, val_every=100, lr_decay_every=2, lr_decay_gamma=0.5)
    train(tiny_config(steps=6, **settings), tmp_path / "full", progress=False)
    train(tiny_config(steps=4, **settings), tmp_path / "part", progress=False, stop_after=stop_after)
    capsys.readouterr()
    extended = train(out=tmp_path / "part", resume=True, steps=6, progress=False)
    done = 4 if stop_after is None else 2
    assert f"resuming {tmp_path / 'part'} at step {done}: steps 4 -> 6" in capsys.readouterr().out
    assert extended["step"] == 6 and not extended["stopped"]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "part")
    assert "steps: 6" in (tmp_path / "part" / "config.yaml").read_text().splitlines()
    # and a later plain resume keeps the new length: nothing left to do
    assert train(out=tmp_path / "part", resume=True, progress=False)["step"] == 6


def test_an_extended_cosine_run_takes_the_6_step_schedules_rates_from_the_resumed_step(tmp_path, data):
    settings = dict(data=data, save_every=2, log_every=1, val_every=100, lr_schedule="cosine", meta_lr=0.01,
                    min_meta_lr=0.001)
    train(tiny_config(steps=6, **settings), tmp_path / "full", progress=False)
    train(tiny_config(steps=4, **settings), tmp_path / "part", progress=False)
    train(out=tmp_path / "part", resume=True, steps=6, progress=False)
    rates = lambda out: {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    full, part = rates(tmp_path / "full"), rates(tmp_path / "part")
    assert part[4] == pytest.approx(0.001, rel=1e-9)  # the 4-step run ended at its floor
    assert [part[5], part[6]] == pytest.approx([full[5], full[6]], rel=1e-12)


def test_steps_on_resume_is_refused_below_the_runs_step_and_without_resume(tmp_path, data):
    out = tmp_path / "run"
    train(tiny_config(data=data, steps=4), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FewshotError, match=r"already at step 4; --steps .* at least 4"):
        train(out=out, resume=True, steps=3, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(FewshotError, match="--steps goes with --resume"):
        train(tiny_config(data=data), tmp_path / "new", steps=6, progress=False)
    assert not (tmp_path / "new").exists()


def test_a_resume_that_batches_the_tasks_continues_with_the_same_gradient(tmp_path, data, capsys):
    # the 4-step run computed task by task, continued to 6 with all tasks in one pass: the
    # weights of the uninterrupted per-task run, to float32 rounding (not bitwise: the batched
    # pass sums in another order). Not the convolutions' biases: batch norm cancels them, so
    # their gradient is zero but for rounding, which Adam's division scales into steps
    settings = dict(data=data, save_every=2, log_every=1, val_every=100, batch_tasks=False)
    train(tiny_config(steps=6, **settings), tmp_path / "full", progress=False)
    train(tiny_config(steps=4, **settings), tmp_path / "part", progress=False)
    capsys.readouterr()
    train(out=tmp_path / "part", resume=True, steps=6, changes={"batch_tasks": True}, progress=False)
    assert f"resuming {tmp_path / 'part'} at step 4: steps 4 -> 6; batch_tasks false -> true" in capsys.readouterr().out
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    compared = [name for name in a if not name.endswith("conv.bias")]
    assert len(compared) > len(a) - 5
    for name in compared:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name
    assert "batch_tasks: true" in (tmp_path / "part" / "config.yaml").read_text().splitlines()


@pytest.mark.parametrize("changes, message", [
    ({"inner_lr": 0.5}, "a resume may change only steps, compile, batch_tasks, tasks_per_pass"),
    ({"tasks_per_pass": 0}, "tasks_per_pass"),
    ({"steps": 5}, "--steps 6 and --set steps=5 disagree")])
def test_a_resume_refuses_another_objective_a_bad_value_or_two_lengths_and_leaves_the_run_as_it_was(tmp_path, data, changes, message):
    out = tmp_path / "run"
    train(tiny_config(data=data, steps=4), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FewshotError, match=message):
        train(out=out, resume=True, steps=6, changes=changes, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(FewshotError, match="changes go with resume=True"):
        train(tiny_config(data=data), tmp_path / "new", changes={"compile": True}, progress=False)
    assert not (tmp_path / "new").exists()


def test_sinusoid_rows_count_points_not_images(tmp_path, capsys):
    from fewshot.config import load_preset
    config = load_preset("sinusoid-10shot").replace(steps=2, log_every=1, val_every=2, val_tasks=2)
    train(config, tmp_path / "sine", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "sine" / "metrics.jsonl").read_text().splitlines()]
    # 25 tasks of 10 support and 10 query points per meta-step
    assert all("images_per_s" not in r and r["points_per_s"] == pytest.approx(25 * 20 / r["sec_per_step"])
               for r in rows)
    printed = capsys.readouterr().out
    assert "points/s" in printed and "img/s" not in printed


def test_the_trainer_runs_the_compiled_step_when_asked(tmp_path, data, monkeypatch):
    from fewshot import compiled, train as train_module
    calls = []

    def traced(algorithm, config):
        step = compiled.compile_step(algorithm, config, backend="aot_eager")  # no C++ build in tests
        calls.append(step == algorithm.meta_gradient)
        return step
    monkeypatch.setattr(train_module, "compile_step", traced)
    # SGD: weights move by the gradient itself (Adam would turn the float noise of a zero
    # gradient, such as a conv bias before batch norm, into a full step of either sign)
    sgd = dict(meta_optimizer="sgd", meta_lr=0.1)
    eager = train(tiny_config(data=data, steps=3, **sgd), tmp_path / "eager", progress=False)
    graph = train(tiny_config(data=data, steps=3, compile=True, **sgd), tmp_path / "compiled", progress=False)
    assert calls == [True, False]  # the eager run keeps algorithm.meta_gradient; the compiled one does not
    assert eager["step"] == graph["step"] == 3
    for name, value in weights(tmp_path / "eager").items():
        torch.testing.assert_close(weights(tmp_path / "compiled")[name], value, rtol=1e-4, atol=1e-5)


def test_bf16_precision_trains_close_to_fp32(tmp_path, data):
    # (a comparison of the default with fp32 was dropped: the default is fp32, the same run twice)
    sgd = dict(meta_optimizer="sgd", meta_lr=0.1)  # weights move by the gradient itself
    train(tiny_config(data=data, steps=2, precision="fp32", **sgd), tmp_path / "fp32", progress=False)
    train(tiny_config(data=data, steps=2, precision="bf16", **sgd), tmp_path / "bf16", progress=False)
    fp32, bf16 = (weights(tmp_path / name) for name in ("fp32", "bf16"))
    torch.manual_seed(0)  # the trainer seeds with the config's seed (0) before building
    start = algorithms.build(tiny_config(data=data)).state_dict()
    moved = [n for n in fp32 if not torch.equal(fp32[n], bf16[n])]
    assert moved  # autocast reached the step
    # bf16 keeps 8 significant bits; through this 4-filter net's second-order step (batch
    # norm over 3 images) the meta-gradient's error is a third to a half of its norm
    # (measured), yet the moves stay aligned: cosine 0.62 here, where an autocast that
    # broke the gradient would give about 0. The accuracy cost is in docs/results.md.
    step_fp32 = torch.cat([(fp32[n] - start[n]).flatten() for n in moved])
    step_bf16 = torch.cat([(bf16[n] - start[n]).flatten() for n in moved])
    assert torch.nn.functional.cosine_similarity(step_fp32, step_bf16, dim=0) >= 0.4
