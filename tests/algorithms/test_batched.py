"""The batched meta-step (all tasks of a meta-batch in one pass) gives the per-task
loop's meta-gradient, for every algorithm of the MAML family, in float64."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fewshot import algorithms
from fewshot.config import load_preset
from fewshot.data.episodes import Task
from fewshot.models import conv4

from algorithms.test_maml import make_tasks
from helpers import tiny_config

FAMILY = {
    "maml": {},
    "fomaml": {"first_order": True},
    "anil": {"algorithm": "anil"},
    "metasgd": {"algorithm": "metasgd"},
}
# MAML++ over 10-step "epochs": first order for 1 epoch, multi-step loss annealed over 2
MAMLPP = dict(algorithm="mamlpp", per_step_bn=True, inner_steps=3, eval_inner_steps=3, msl_epochs=2,
              steps_per_epoch=10, first_order_epochs=1)


def build(batch_tasks, **overrides):
    torch.manual_seed(0)
    config = tiny_config(**{"inner_steps": 2, "inner_lr": 0.3, **overrides, "batch_tasks": batch_tasks})
    return algorithms.build(config).double()


def meta_gradient(algorithm, tasks, step=0):
    algorithm.zero_grad()
    result = algorithm.meta_gradient(tasks, step)
    return result, {n: p.grad.clone() for n, p in algorithm.named_parameters() if p.grad is not None}


def assert_same_meta_gradient(overrides, tasks, step=0):
    loop_algorithm, batched_algorithm = build(False, **overrides), build(True, **overrides)
    assert not loop_algorithm.batches_tasks(tasks) and batched_algorithm.batches_tasks(tasks)
    loop_result, loop = meta_gradient(loop_algorithm, tasks, step)
    batched_result, batched = meta_gradient(batched_algorithm, tasks, step)
    assert sorted(batched) == sorted(loop) == sorted(n for n, _ in loop_algorithm.named_parameters())
    for name in loop:
        torch.testing.assert_close(batched[name], loop[name], rtol=1e-10, atol=1e-13, msg=name)
    assert sum(g.abs().sum() for g in loop.values()) > 0
    for key in loop_result:
        torch.testing.assert_close(batched_result[key], loop_result[key], rtol=1e-10, atol=1e-13)
    return loop


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_batched_meta_gradient_equals_the_per_task_loop(name, downsample):
    assert_same_meta_gradient({**FAMILY[name], "downsample": downsample}, make_tasks(3))


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize("step,first_order_epochs", [
    (0, 1),    # first order, multi-step loss weights uniform
    (15, 1),   # second order, weights half annealed
    (25, 1),   # second order, weights annealed: the last step only
    (25, 3),   # first order, weights annealed
])
def test_mamlpp_batched_meta_gradient_equals_the_per_task_loop(downsample, step, first_order_epochs):
    overrides = {**MAMLPP, "downsample": downsample, "first_order_epochs": first_order_epochs}
    algorithm = build(False, **overrides)
    weights = algorithm.loss_weights(step)
    # integer epochs (step // 10), as the authors': step 15 is epoch 1 of the 2-epoch span
    expected = {0: pytest.approx([1 / 3] * 3), 15: pytest.approx([1 / 6, 1 / 6, 2 / 3])}.get(step, [0.0, 0.0, 1.0])
    assert weights == expected
    assert algorithm.second_order(step) == (step // 10 >= first_order_epochs)
    loop = assert_same_meta_gradient(overrides, make_tasks(3), step)
    # the learned per-tensor per-step rates and the per-step batch-norm weights (the last row: step 2) are in
    # the comparison
    assert loop["step_sizes.blocks/0/conv/weight"].abs().sum() > 0
    assert loop["model.blocks.0.norm.weight"][2].abs().sum() > 0


def test_mamlpp_first_and_second_order_differ_so_the_comparison_can_tell_them_apart():
    tasks = make_tasks(3)
    _, first = meta_gradient(build(True, **MAMLPP), tasks, step=0)
    _, second = meta_gradient(build(True, **MAMLPP), tasks, step=10)
    # step 10: second order and slightly annealed weights; both change the conv gradient
    assert (first["model.blocks.0.conv.weight"] - second["model.blocks.0.conv.weight"]).abs().max() > 1e-6


@pytest.mark.parametrize("overrides", [{}, FAMILY["anil"], MAMLPP], ids=["maml", "anil", "mamlpp"])
def test_tasks_per_pass_chunks_give_the_whole_batch_gradient(overrides):
    tasks = make_tasks(5)
    whole_result, whole = meta_gradient(build(True, **overrides), tasks, step=12)
    chunked_algorithm = build(True, **overrides, tasks_per_pass=2)  # passes of 2, 2 and 1 tasks
    calls = []
    objective = chunked_algorithm.objective
    chunked_algorithm.objective = lambda *args, **kwargs: calls.append(len(args[0])) or objective(*args, **kwargs)
    chunked_result, chunked = meta_gradient(chunked_algorithm, tasks, step=12)
    assert calls == [2, 2, 1]
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=1e-15)
    for key in whole_result:
        torch.testing.assert_close(chunked_result[key], whole_result[key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("batch_tasks", [False, True])
def test_metrics_are_detached_zero_dim_tensors(batch_tasks):
    algorithm = build(batch_tasks)
    result = algorithm.meta_gradient(make_tasks(2))
    assert set(result) == {"loss", "accuracy"}
    for value in result.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    assert 0 <= float(result["accuracy"]) <= 1 and float(result["loss"]) > 0


@pytest.mark.parametrize("overrides", [{}, {"downsample": "stride", "tasks_per_pass": 2}, MAMLPP],
                         ids=["maml", "maml-stride-in-passes-of-2", "mamlpp"])
def test_inductive_batch_norm_batched_gives_the_loops_gradient_and_running_statistics(overrides):
    overrides = {**overrides, "batch_norm": "inductive"}
    tasks = make_tasks(3)
    loop_algorithm, batched_algorithm = build(False, **overrides), build(True, **overrides)
    assert batched_algorithm.batches_tasks(tasks)
    for step in (0, 15):  # two meta-steps: the second starts from the first's statistics
        assert_same_meta_gradient(overrides, tasks, step)
        meta_gradient(loop_algorithm, tasks, step)
        meta_gradient(batched_algorithm, tasks, step)
    for name, buffer in loop_algorithm.model.named_buffers():
        if "running" in name:
            assert (buffer - torch.zeros_like(buffer) if "mean" in name else buffer - 1).abs().max() > 1e-3, name
            torch.testing.assert_close(dict(batched_algorithm.model.named_buffers())[name], buffer,
                                       rtol=1e-12, atol=1e-14, msg=name)
    assert batched_algorithm.model.queued_statistics == []


def test_tasks_of_different_shapes_keep_the_per_task_loop():
    algorithm = build(True)
    assert not algorithm.batches_tasks(make_tasks(1, shots=1) + make_tasks(1, shots=2))


def fake_tasks(config, device="cpu"):
    """Tasks of a preset's shapes (the default depends on them and the device only)."""
    if config.dataset == "sinusoid":
        support, query = torch.zeros(1, config.shots, 1), torch.zeros(1, config.query, 1)
    else:
        image = (config.channels, config.image_size, config.image_size)
        support = torch.zeros(1, config.ways * config.shots, *image)
        query = torch.zeros(1, config.ways * config.query, *image)
    labels = lambda x: torch.zeros(x.shape[1], dtype=torch.long)
    return [Task(support[0], labels(support), query[0], labels(query))] * 2


def documented_cpu_rule():
    """The rule and the tables of docs/benchmarks.md's section on the batched pass:
    (max images at one thread, max support pixels at two or more, {threads: {preset: default}})."""
    text = (Path(__file__).parents[2] / "docs" / "benchmarks.md").read_text()
    section = text[text.index("## Making the meta-step faster: all tasks in one pass"):]
    section = section[:section.index("\n## ", 1)]
    images = int(re.search(r"batched when a task has at most (\d+) images", section).group(1))
    pixels = int(re.search(r"batched when a task's support set has at most (\d+) pixels", section).group(1))
    tables = {}
    for threads, header in ((1, "| default at 1 thread |"), (2, "| default at 2+ threads |")):
        table = section[section.index(header):].split("\n\n")[0]
        tables[threads] = dict(re.findall(r"^\| `([\w-]+)` \|[^\n]*\| (batched|loop) \|$", table, re.M))
    return images, pixels, tables


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_the_default_on_a_cpu_is_the_documented_rule(threads):
    images, pixels, tables = documented_cpu_rule()
    assert conv4.CPU_BATCHING_MAX_IMAGES == images and conv4.CPU_BATCHING_MAX_SUPPORT_PIXELS == pixels
    table = tables[min(threads, 2)]  # more threads than measured take the 2-thread rule
    assert len(table) >= 8
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for preset, documented in table.items():
            config = load_preset(preset).unchecked_replace(filters=4)
            algorithm = algorithms.build(config)
            assert algorithm.batches_tasks(fake_tasks(config)) == (documented == "batched"), (preset, threads)
    finally:
        torch.set_num_threads(was)


def test_the_default_on_cuda_is_batched_whatever_the_task_size():
    algorithm = build(None)
    shape = (10**3, 1, 28, 28)
    big = SimpleNamespace(support_x=SimpleNamespace(device=torch.device("cuda"), shape=shape),
                          query_x=SimpleNamespace(shape=shape), images=10**6)
    assert algorithm.batches_tasks([big])
    on_the_cpu = torch.zeros(1, 1, 1, 1).expand(*shape)  # a large task's shape, no memory
    assert not algorithm.batches_tasks([SimpleNamespace(support_x=on_the_cpu, query_x=on_the_cpu, images=2 * 10**3)])
