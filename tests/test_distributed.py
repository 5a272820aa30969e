"""Task-parallel training: two processes compute what one does."""
import json

import torch

from fewshot import algorithms, checkpoint, distributed
from fewshot.train import train

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
