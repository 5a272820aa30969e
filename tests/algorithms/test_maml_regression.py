"""MAML on sinusoid regression: the batched meta-gradient (all tasks in one pass)
is the per-task one, the second-order gradient is the derivative of the MAML
objective, and a short real run learns to adapt."""
import pytest
import torch
import torch.nn.functional as F

from fewshot import algorithms, data
from fewshot.config import apply_overrides, eval_query, load_preset
from fewshot.data.sinusoid import SinusoidSampler
from fewshot.evaluate import evaluate, evaluate_checkpoint
from fewshot.models.mlp import MLP
from fewshot.train import train

import helpers


class LoopOnlyMLP(MLP):
    """The same network declaring no batched pass: MAML falls back to its per-task loop."""

    can_batch_tasks = False


def sine_config(**overrides):
    return apply_overrides(load_preset("sinusoid-10shot"), overrides)


def build(config, loop_only=False):
    torch.manual_seed(0)
    algorithm = algorithms.build(config).double()
    if loop_only:
        algorithm.model.__class__ = LoopOnlyMLP
        assert not algorithm.batches_tasks(sine_tasks(2))
    return algorithm


def sine_tasks(n, shots=10, query=10, seed=0):
    return SinusoidSampler(shots, query, seed, dtype=torch.float64).batch(0, n)


def gradient(algorithm, tasks):
    algorithm.zero_grad()
    result = algorithm.meta_gradient(tasks)
    return result, {n: p.grad.clone() for n, p in algorithm.model.named_parameters()}


def mlp_written_out(params, x, layers=3):
    """The paper's regression network: linear layers with ReLU between them."""
    for i in range(layers):
        x = F.linear(x, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])
        x = F.relu(x) if i < layers - 1 else x
    return x


def central_difference(algorithm, tasks, param, flat, eps):
    """d(the written-out meta-objective)/d(param.view(-1)[flat]) by central differences."""
    return helpers.central_difference(lambda: [reference_gradient(algorithm, tasks, True)[0]], param, flat, eps)[0]


def reference_gradient(algorithm, tasks, second_order):
    """The meta-gradient written out (Finn et al. 2017, Algorithm 2 with the MSE of section 3.1):
    adapt each task on its own with SGD on its support MSE, differentiate its query MSE (first order:
    with the inner gradients held constant)."""
    config = algorithm.config
    meta = {n: p.detach().clone().requires_grad_() for n, p in algorithm.model.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in meta.items()}
    losses = []
    for task in tasks:
        fast = dict(meta)
        for _ in range(config.inner_steps):
            support_loss = ((mlp_written_out(fast, task.support_x) - task.support_y) ** 2).mean()
            grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=second_order)
            fast = {n: p - config.inner_lr * (g if second_order else g.detach()) for (n, p), g in zip(fast.items(), grads)}
        loss = ((mlp_written_out(fast, task.query_x) - task.query_y) ** 2).mean()
        for n, g in zip(meta, torch.autograd.grad(loss, list(meta.values()))):
            total[n] += g / len(tasks)
        losses.append(loss.item())
    return sum(losses) / len(losses), total


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_steps", [1, 3])
def test_batched_meta_gradient_equals_the_per_task_loop(monkeypatch, first_order, inner_steps):
    config = sine_config(first_order=first_order, inner_steps=inner_steps, inner_lr=0.05)
    tasks = sine_tasks(6)
    calls = []
    batched_pass = MLP.tasks_forward
    monkeypatch.setattr(MLP, "tasks_forward",
                        lambda self, *args, **kwargs: calls.append(1) or batched_pass(self, *args, **kwargs))
    batched_result, batched = gradient(build(config), tasks)
    assert len(calls) == inner_steps + 1  # the MLP took the batched path: one pass per inner step and the query ...
    loop_result, loop = gradient(build(config, loop_only=True), tasks)
    assert len(calls) == inner_steps + 1  # ... and the loop-only copy did not
    loss, expected = reference_gradient(build(config), tasks, second_order=not first_order)
    for name in batched:
        assert batched[name].abs().max() > 1e-3  # every tensor gets a real gradient
        torch.testing.assert_close(batched[name], loop[name], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(batched[name], expected[name], rtol=1e-10, atol=1e-10)
    # the metrics may come back as 0-dim tensors (read once per log row by the trainer)
    assert float(batched_result["loss"]) == pytest.approx(float(loop_result["loss"]), rel=1e-10)
    assert float(batched_result["loss"]) == pytest.approx(loss, rel=1e-10)
    assert float(batched_result["mse"]) == pytest.approx(float(loop_result["mse"]), rel=1e-10)


def test_batched_path_leaves_the_weights_unchanged_and_accumulates_like_backward():
    config = sine_config()
    algorithm = build(config)
    before = {n: p.detach().clone() for n, p in algorithm.model.named_parameters()}
    tasks = sine_tasks(4)
    _, once = gradient(algorithm, tasks)
    algorithm.meta_gradient(tasks)  # .grad accumulates, as after loss.backward()
    for n, p in algorithm.model.named_parameters():
        assert torch.equal(p, before[n])
        torch.testing.assert_close(p.grad, 2 * once[n], rtol=1e-12, atol=1e-14)


def test_second_order_batched_meta_gradient_matches_finite_differences_in_float64():
    # a large inner step makes the second-order term big enough to tell apart from FOMAML
    config = sine_config(inner_steps=2, inner_lr=0.1)
    algorithm = build(config)
    tasks = sine_tasks(3, seed=5)
    _, grads = gradient(algorithm, tasks)
    _, first_order = gradient(build(sine_config(inner_steps=2, inner_lr=0.1, first_order=True)), tasks)
    rng = torch.Generator().manual_seed(1)
    eps, checked, second_order_visible = 1e-6, 0, 0
    for name, param in algorithm.model.named_parameters():
        for flat in torch.randint(param.numel(), (5,), generator=rng).tolist():
            numeric = central_difference(algorithm, tasks, param, flat, eps)
            analytic = grads[name].view(-1)[flat].item()
            assert abs(numeric - analytic) <= 1e-7 + 1e-5 * abs(numeric), (name, flat, numeric, analytic)
            approx = first_order[name].view(-1)[flat].item()
            second_order_visible += abs(numeric - approx) > 1e-4 + 1e-3 * abs(numeric)
            checked += 1
    assert checked == 5 * len(grads)
    assert second_order_visible >= checked // 2  # the check would catch a first-order gradient


def test_a_short_real_run_learns_to_adapt(tmp_path):
    """1500 meta-steps of the paper's setting (a few seconds): one inner step then cuts
    the test MSE well below the pre-adaptation MSE, and ten steps cut it further. An
    untrained network gains almost nothing from the same steps."""
    steps = 1500
    config = sine_config(steps=steps, log_every=steps, val_every=steps, val_tasks=20, save_every=steps)
    result = train(config, tmp_path / "sine", progress=False)
    assert result["step"] == steps and not result["stopped"]
    trained = evaluate_checkpoint(tmp_path / "sine", at_steps=[0, 1, 10], tasks=100, progress=False)
    assert trained["metric"] == "mse" and trained["tasks"] == 100 and trained["query"] == 100
    mse = {int(k): v["mean"] for k, v in trained["by_steps"].items()}
    ci = {int(k): v["ci95"] for k, v in trained["by_steps"].items()}
    assert set(mse) == {0, 1, 10} and trained["mean"] == mse[10]  # the preset's 10 eval steps
    # observed (3 training seeds): 0 steps ~2.8, 1 step ~1.0, 10 steps ~0.5
    assert mse[1] < 0.6 * mse[0] and mse[1] + ci[1] < mse[0] - ci[0]
    assert mse[10] < 0.75 * mse[1] and mse[10] < 0.8
    torch.manual_seed(0)
    untrained = algorithms.build(config)
    sampler = data.sampler(config, None, None, "test", config.eval_seed, query=eval_query(config))
    before = {int(k): v["mean"] for k, v in evaluate(untrained, sampler, 100, at_steps=[0, 1])["by_steps"].items()}
    assert before[1] > 0.85 * before[0]  # observed ~0.95: the gain above is meta-learned
    assert mse[0] < before[0]
