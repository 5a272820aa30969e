"""Task-parallel training: two processes compute what one does."""
import json
import math

import torch

from fewshot import algorithms, checkpoint, distributed
from fewshot.train import train

from algorithms import test_leo
from algorithms.test_maml import make_tasks
from helpers import tagged_dataset, tiny_config


def _meta_gradient(tasks, config):
    rank, size = distributed.world()
    torch.manual_seed(0)
    algorithm = algorithms.build(config).double()
    part = distributed.share(len(tasks), rank, size)
    result = algorithm.meta_gradient([tasks[i] for i in part])
    if size > 1:
        result = distributed.reduce_meta_gradient(algorithm.parameters(), result, len(part), len(tasks))
    result = algorithm.finish_meta_gradient(result)
    return {n: p.grad.clone() for n, p in algorithm.named_parameters()}, result


def _worker(tasks, config, path):
    grads, result = _meta_gradient(tasks, config)
    if distributed.world()[0] == 0:
        torch.save({"grads": grads, "result": result}, path)


def test_two_processes_give_the_single_process_meta_gradient(tmp_path):
    config = tiny_config(inner_steps=2)
    tasks = make_tasks(5)  # an odd meta-batch: shares of 3 and 2 tasks
    single, single_result = _meta_gradient(tasks, config)
    distributed.spawn(_worker, 2, tasks, config, tmp_path / "grads.pt")
    both = torch.load(tmp_path / "grads.pt")
    assert both["grads"].keys() == single.keys()
    for name in single:
        torch.testing.assert_close(both["grads"][name], single[name], rtol=1e-10, atol=1e-12)
    assert abs(both["result"]["loss"] - single_result["loss"]) < 1e-10


def test_two_processes_give_the_single_process_leo_meta_gradient(tmp_path):
    # LEO samples latents, weights and dropout masks: each task draws them from its own
    # seed, so splitting the meta-batch across processes changes nothing
    config = test_leo.leo_config(meta_batch=5)
    tasks = test_leo.make_tasks(5)
    for position, task in enumerate(tasks):
        task.seed = (7, 0, position)
    single, single_result = _meta_gradient(tasks, config)
    distributed.spawn(_worker, 2, tasks, config, tmp_path / "grads.pt")
    both = torch.load(tmp_path / "grads.pt")
    shares = [_meta_gradient([tasks[i] for i in part], config)[0] for part in ([0, 2, 4], [1, 3])]
    for name in single:
        assert single[name].abs().sum() > 0, name
        # exactly the weighted mean of the two shares, computed in one process ...
        torch.testing.assert_close(both["grads"][name], shares[0][name] * 3 / 5 + shares[1][name] * 2 / 5,
                                   rtol=1e-12, atol=1e-15)
        # ... and the whole batch's gradient up to float64 rounding: the KL term's log-std
        # gradients are large and cancel, so rounding of the mean over 5 versus 3 + 2 tasks
        # shows at ~1e-9 of the gradient's size (other seeds differ at ~100%, below)
        scale = single[name].abs().max()
        torch.testing.assert_close(both["grads"][name], single[name], rtol=0, atol=1e-8 * scale)
    assert abs(both["result"]["loss"] - single_result["loss"]) < 1e-10
    other = [test_leo.Task(t.support_x, t.support_y, t.query_x, t.query_y, seed=(8, 0, i))
             for i, t in enumerate(tasks)]
    assert not torch.equal(_meta_gradient(other, config)[0]["encoder"], single["encoder"])  # the seeds matter


def test_one_overflowing_task_sends_every_process_to_leos_fallback_gradient(tmp_path):
    config = test_leo.leo_config(meta_batch=4)
    tasks = test_leo.make_tasks(4)
    tasks[1].support_x[0, 0] = float("nan")  # only rank 1's share holds it
    single, single_result = _meta_gradient(tasks, config)
    distributed.spawn(_worker, 2, tasks, config, tmp_path / "grads.pt")
    both = torch.load(tmp_path / "grads.pt")
    torch.manual_seed(0)
    weights = dict(algorithms.build(config).double().named_parameters())
    for name in ("encoder", "decoder", "relation.0"):
        torch.testing.assert_close(single[name], 1e-4 * weights[name].detach())
        torch.testing.assert_close(both["grads"][name], single[name])
    assert both["grads"]["inner_lr"].abs().sum() == 0 and single["inner_lr"].abs().sum() == 0
    assert math.isnan(float(single_result["loss"])) and math.isnan(float(both["result"]["loss"]))


def test_a_two_process_run_resumes_like_a_one_process_run(tmp_path):
    data = str(tagged_dataset(tmp_path / "data", classes=80))
    config = tiny_config(data=data, steps=5, meta_batch=3, save_every=2, val_every=5, threads=1)
    train(config, tmp_path / "full", procs=2, progress=False)
    part = train(config, tmp_path / "part", procs=2, progress=False, stop_after=2)  # at a log boundary, so the logged windows match
    assert part["stopped"] and part["step"] == 2
    train(out=tmp_path / "part", resume=True, procs=2, progress=False)
    single = train(config, tmp_path / "single", progress=False)
    full = checkpoint.load(tmp_path / "full")["algorithm"]
    resumed = checkpoint.load(tmp_path / "part" / "last.pt")["algorithm"]
    one = checkpoint.load(tmp_path / "single" / "last.pt")["algorithm"]
    assert single["step"] == 5
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    # Summing two shares instead of one sequence changes float32 rounding only. A conv
    # bias in front of batch norm has a true gradient of zero, so its float32 gradient
    # is rounding noise that Adam scales up to full steps: those are left out.
    for name in full:
        if not name.endswith("conv.bias"):
            torch.testing.assert_close(full[name], one[name], rtol=1e-4, atol=1e-5)
    losses = lambda out: [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "full") == losses(tmp_path / "part")
    for a, b in zip(losses(tmp_path / "full"), losses(tmp_path / "single")):
        assert abs(a - b) < 1e-5


def test_the_process_groups_backend_follows_the_runs_device_not_the_gpus_present(tmp_path, monkeypatch):
    """A CPU run joins gloo even where torch sees GPUs (NCCL would refuse its CPU tensors);
    a CUDA run joins NCCL."""
    assert (distributed.backend_for("cpu"), distributed.backend_for("cuda:1")) == ("gloo", "nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    asked = []

    class Stop(Exception):
        pass

    def spawn(function, procs, *args, backend):
        asked.append((procs, backend))
        raise Stop

    monkeypatch.setattr(distributed, "spawn", spawn)
    config = tiny_config(data=str(tagged_dataset(tmp_path / "data", classes=12)), meta_batch=2)
    try:
        train(config, tmp_path / "run", progress=False, procs=2, device="cpu")
    except Stop:
        pass
    assert asked == [(2, "gloo")]
