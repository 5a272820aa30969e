import torch

from fewshot import algorithms
from fewshot.data.episodes import Task

import helpers
from helpers import tiny_config


def make_tasks(n, ways=3, shots=2, query=3, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n):
        tasks.append(Task(torch.rand(ways * shots, 1, size, size, generator=generator, dtype=torch.float64),
                          torch.arange(ways).repeat_interleave(shots),
                          torch.rand(ways * query, 1, size, size, generator=generator, dtype=torch.float64),
                          torch.arange(ways).repeat_interleave(query)))
    return tasks


def build(**overrides):
    torch.manual_seed(0)
    return algorithms.build(tiny_config(**overrides)).double()


def meta_objective(algorithm, tasks):
    """The MAML objective evaluated from scratch: mean query loss after the inner loop."""
    config = algorithm.config
    total = 0.0
    for task in tasks:
        params = {n: p.detach().clone().requires_grad_() for n, p in algorithm.model.named_parameters()}
        fast = algorithm.inner_loop(params, task.support_x, task.support_y, config.inner_steps,
                                    config.inner_lr, create_graph=False)
        total += algorithm.family.loss(algorithm.model.functional_forward(fast, task.query_x), task.query_y).item()
    return total / len(tasks)


def central_difference(algorithm, tasks, param, flat, eps):
    """d(meta-objective)/d(param.view(-1)[flat]) by central differences; restores the entry."""
    return helpers.central_difference(lambda: [meta_objective(algorithm, tasks)], param, flat, eps)[0]


def analytic_gradient(algorithm, tasks):
    algorithm.zero_grad()
    algorithm.meta_gradient(tasks)
    return {n: p.grad.clone() for n, p in algorithm.model.named_parameters()}


def test_second_order_meta_gradient_matches_finite_differences_in_float64():
    for downsample in ("maxpool", "stride"):
        algorithm = build(inner_steps=2, inner_lr=0.3, downsample=downsample)
        tasks = make_tasks(2)
        grads = analytic_gradient(algorithm, tasks)
        rng = torch.Generator().manual_seed(1)
        eps, checked = 1e-6, 0
        for name, param in algorithm.model.named_parameters():
            for flat in torch.randint(param.numel(), (4,), generator=rng).tolist():
                numeric = central_difference(algorithm, tasks, param, flat, eps)
                analytic = grads[name].view(-1)[flat].item()
                assert abs(numeric - analytic) <= 1e-6 + 1e-5 * abs(numeric), (downsample, name, numeric, analytic)
                checked += 1
        assert checked == 4 * len(grads)


def test_first_order_is_the_query_gradient_at_the_adapted_weights():
    algorithm = build(first_order=True, inner_steps=2)
    tasks = make_tasks(3)
    grads = analytic_gradient(algorithm, tasks)
    expected = {n: torch.zeros_like(p) for n, p in algorithm.model.named_parameters()}
    for task in tasks:
        params = {n: p.detach().clone().requires_grad_() for n, p in algorithm.model.named_parameters()}
        fast = algorithm.inner_loop(params, task.support_x, task.support_y, 2, algorithm.config.inner_lr, False)
        fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
        loss = algorithm.family.loss(algorithm.model.functional_forward(fast, task.query_x), task.query_y)
        for (n, _), g in zip(fast.items(), torch.autograd.grad(loss, tuple(fast.values()))):
            expected[n] += g / len(tasks)
    for n in grads:
        torch.testing.assert_close(grads[n], expected[n], rtol=1e-10, atol=1e-12)


def test_first_and_second_order_agree_without_inner_steps_and_differ_with_them():
    tasks = make_tasks(2)
    exact = analytic_gradient(build(inner_steps=0), tasks)
    first = analytic_gradient(build(inner_steps=0, first_order=True), tasks)
    for n in exact:
        torch.testing.assert_close(exact[n], first[n], rtol=1e-12, atol=1e-14)
    exact = analytic_gradient(build(inner_steps=1), tasks)
    first = analytic_gradient(build(inner_steps=1, first_order=True), tasks)
    assert max((exact[n] - first[n]).abs().max().item() for n in exact) > 1e-6


def test_adaptation_lowers_the_support_loss_and_keeps_no_graph():
    algorithm = build(eval_inner_steps=5, inner_lr=0.1)
    task = make_tasks(1)[0]
    module_before = {n: p.detach().clone() for n, p in algorithm.model.named_parameters()}
    before = algorithm.family.loss(algorithm.predict(algorithm.adapt(task.support_x, task.support_y, steps=0),
                                                     task.support_x), task.support_y)
    adapted = algorithm.adapt(task.support_x, task.support_y)
    after = algorithm.family.loss(algorithm.predict(adapted, task.support_x), task.support_y)
    assert after < before
    assert all(p.grad_fn is None and not p.requires_grad for p in adapted["params"].values())
    # adaptation moved the adapted weights, and never changed the module itself
    for n, p in algorithm.model.named_parameters():
        assert torch.equal(p, module_before[n]) and p.grad is None
        assert not torch.equal(p, adapted["params"][n])


def test_meta_gradient_leaves_the_weights_unchanged():
    algorithm = build()
    before = {n: p.detach().clone() for n, p in algorithm.model.named_parameters()}
    algorithm.meta_gradient(make_tasks(2))
    for n, p in algorithm.model.named_parameters():
        assert torch.equal(p, before[n])


def test_batched_conv4_tasks_give_the_per_task_meta_gradient_in_float64():
    for downsample in ("stride", "maxpool"):
        for first_order in (False, True):
            tasks = make_tasks(3)
            loop = analytic_gradient(build(downsample=downsample, first_order=first_order, inner_steps=2), tasks)
            algorithm = build(downsample=downsample, first_order=first_order, inner_steps=2, batch_tasks=True)
            assert algorithm.batches_tasks(tasks)
            batched = analytic_gradient(algorithm, tasks)
            for name in loop:
                torch.testing.assert_close(batched[name], loop[name], rtol=1e-10, atol=1e-12)
