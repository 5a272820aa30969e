"""The `compile` key: the compiled meta-step gives the eager step's meta-gradient
(float64, tiny conv4), and whatever it cannot compile runs eagerly after one line.

The compiled tests use torch.compile's `aot_eager` backend: dynamo and AOTAutograd
capture exactly the graph that the default backend (inductor) compiles, without
building C++ kernels, which takes minutes on a cold inductor cache on 2 cores. The
inductor test runs when FEWSHOT_TEST_INDUCTOR=1."""
import os

import pytest
import torch

from fewshot import algorithms, compiled
from fewshot.data.episodes import Task

from helpers import tiny_config

# float64 sums in another order (the compiled graph's, the eager autograd's) agree to
# a few ulps of the largest intermediate; 1e-12 relative to the largest entry leaves
# room for that and nothing else (a wrong term is of order 1e-2 or more here)
TOLERANCE = 1e-12


def make_tasks(count=2, ways=3, shots=1, query=2, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Task(torch.rand(ways * shots, 1, size, size, generator=generator, dtype=torch.float64),
                 torch.arange(ways).repeat_interleave(shots),
                 torch.rand(ways * query, 1, size, size, generator=generator, dtype=torch.float64),
                 torch.arange(ways).repeat_interleave(query)) for _ in range(count)]


def build(**overrides):
    config = tiny_config(**{"inner_steps": 1, "inner_lr": 0.3, "downsample": "stride", "batch_tasks": False,
                            "compile": True, **overrides})
    torch.manual_seed(0)
    return algorithms.build(config).double(), config


def gradients(algorithm, step, tasks):
    algorithm.zero_grad(set_to_none=True)
    result = step(tasks, 0)
    return {n: p.grad.clone() for n, p in algorithm.named_parameters()}, result


def assert_same_meta_gradient(algorithm, config, tasks, backend="aot_eager"):
    eager, eager_result = gradients(algorithm, algorithm.meta_gradient, tasks)
    step = compiled.compile_step(algorithm, config, backend=backend)
    assert step != algorithm.meta_gradient
    got, result = gradients(algorithm, step, tasks)
    scale = max(g.abs().max().item() for g in eager.values())
    assert scale > 0.1  # a meta-gradient worth comparing
    for name in eager:
        assert (got[name] - eager[name]).abs().max().item() <= TOLERANCE * scale, name
    for key in eager_result:
        assert float(result[key]) == pytest.approx(float(eager_result[key]), rel=1e-12), key
    # and again: a second call reuses the compiled graph and still gives the same
    again, _ = gradients(algorithm, step, tasks)
    assert all(torch.equal(again[n], got[n]) for n in got)


def test_compiled_second_order_maml_gives_the_eager_meta_gradient(capsys):
    algorithm, config = build(first_order=False)
    assert_same_meta_gradient(algorithm, config, make_tasks())
    assert capsys.readouterr().err == ""  # compiled, no fallback notice


def test_compiled_first_order_maml_gives_the_eager_meta_gradient(capsys):
    algorithm, config = build(first_order=True, downsample="maxpool", inner_steps=2)
    assert_same_meta_gradient(algorithm, config, make_tasks())
    assert capsys.readouterr().err == ""


def test_compiled_anil_over_batched_tasks_gives_the_eager_meta_gradient(capsys):
    """ANIL (inner loop on the head only, second order) with the tasks of a pass
    batched: vmap over tasks of the compiled function, two passes of 2 tasks."""
    algorithm, config = build(algorithm="anil", batch_tasks=True, tasks_per_pass=2)
    assert_same_meta_gradient(algorithm, config, make_tasks(4))
    assert capsys.readouterr().err == ""


# cbfinn/maml's convention and network (its presets' keys): the loss summed / shots, batch norm
# with a shift only and outside the inner loop, TensorFlow's 'SAME' padding
CBFINN = dict(loss_reduction="sum_div_shots", adapt_bn=False, bn_scale=False, bn_eps=1e-3, conv_padding="tf_same",
              head_init="normal")


@pytest.mark.parametrize("first_order,batched", [(False, True), (True, False)], ids=["maml-batched", "fomaml"])
def test_compiled_step_in_cbfinns_form_gives_the_eager_meta_gradient(capsys, first_order, batched):
    algorithm, config = build(first_order=first_order, batch_tasks=batched, image_size=14, shots=2, query=3,
                              **CBFINN)
    assert_same_meta_gradient(algorithm, config, make_tasks(3, shots=2, query=3, size=14))
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.environ.get("FEWSHOT_TEST_INDUCTOR") != "1",
                    reason="inductor builds C++ kernels with gcc: minutes on a cold cache on 2 cores; the aot_eager "
                           "tests check the graph it compiles; set FEWSHOT_TEST_INDUCTOR=1 to run it")
def test_inductor_compiled_second_order_maml_gives_the_eager_meta_gradient():
    algorithm, config = build(first_order=False)
    assert_same_meta_gradient(algorithm, config, make_tasks(), backend="inductor")


def test_compile_false_is_the_eager_step_itself():
    algorithm, config = build(compile=False)
    assert compiled.compile_step(algorithm, config) == algorithm.meta_gradient


@pytest.mark.parametrize("overrides,named", [
    ({"algorithm": "metasgd"}, "MetaSGD changes MAML's step_size"),
    ({"algorithm": "protonet"}, "ProtoNet is not MAML or ANIL"),
    ({"batch_norm": "inductive"}, "inductive batch norm"),
])
def test_what_cannot_be_compiled_runs_eagerly_after_one_line(capsys, overrides, named):
    algorithm, config = build(**overrides)
    step = compiled.compile_step(algorithm, config)
    assert step == algorithm.meta_gradient
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fewshot: note: compile: ") and named in err[0], err


def test_a_step_that_fails_to_compile_runs_eagerly_after_one_line(capsys):
    algorithm, config = build()
    tasks = make_tasks()
    eager, _ = gradients(algorithm, algorithm.meta_gradient, tasks)
    step = compiled.compile_step(algorithm, config, backend="no-such-backend")
    for _ in range(2):  # the notice comes once; later steps go straight to the eager step
        got, _ = gradients(algorithm, step, tasks)
        assert all(torch.equal(got[n], eager[n]) for n in eager)
    assert step.failed  # callers (benchmarks/peers.py) can tell
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiling the step failed" in err[0] and "running the eager meta-step" in err[0], err
