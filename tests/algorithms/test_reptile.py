"""Reptile against openai/supervised-reptile: every example in the mini-batches,
batch norm as configured, and the inner Adam's state across tasks and checkpoints."""
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewshot import algorithms, checkpoint
from fewshot.algorithms import reptile
from fewshot.evaluate import evaluate
from fewshot.optim import make_optimizer
from fewshot.train import train

from algorithms.test_maml import make_tasks
from helpers import tagged_dataset, tiny_config


def build(**overrides):
    torch.manual_seed(0)
    settings = dict(algorithm="reptile", inner_optimizer="adam", inner_lr=0.01, meta_optimizer="sgd", meta_lr=1.0,
                    lr_schedule="linear", min_meta_lr=0.0)
    settings.update(overrides)
    return algorithms.build(tiny_config(**settings)).double()


def record_rows(algorithm, examples):
    """Make the model note, for every forward pass, which of `examples` (by value)
    it was given; returns the list of index lists it fills."""
    flat = examples.flatten(1)
    seen = []
    original = algorithm.model.functional_forward

    def forward(params, x, *args, **kwargs):
        seen.append([int((flat == row).all(1).nonzero()[0]) for row in x.flatten(1)])
        return original(params, x, *args, **kwargs)

    algorithm.model.functional_forward = forward
    return seen


def test_every_support_image_is_used_at_meta_test_with_5_images_and_batches_of_3():
    # reptile-miniimagenet-5w1s at meta-test: 5 support images, inner batch 3. The old
    # fixed permutation restarted at 0 and never trained on 2 of them (2 classes).
    algorithm = build(ways=5, shots=1, inner_batch=3, eval_inner_steps=86)
    task = make_tasks(1, ways=5, shots=1, query=1)[0]
    seen = record_rows(algorithm, task.support_x)
    algorithm.adapt(task.support_x, task.support_y)
    assert len(seen) == 86 and all(len(rows) == 3 for rows in seen)
    counts = Counter(row for rows in seen for row in rows)
    # 258 draws: 51 whole passes over the 5 images, then 3 more of a 52nd pass
    assert sorted(counts.values()) == [51, 51, 52, 52, 52] and set(counts) == set(range(5))
    # two steps already reach every image: one pass of 5, then 1 of the next pass
    seen.clear()
    algorithm.adapt(task.support_x, task.support_y, steps=2)
    assert sorted(seen[0] + seen[1][:2]) == [0, 1, 2, 3, 4]


def test_5_way_5_shot_batches_of_10_use_all_25_support_and_all_75_training_examples():
    # reptile-miniimagenet-5w5s: inner batch 10, 8 steps on 75 examples at meta-train
    algorithm = build(ways=5, shots=5, query=10, inner_batch=10, inner_steps=8, eval_inner_steps=3)
    task = make_tasks(1, ways=5, shots=5, query=10)[0]
    seen = record_rows(algorithm, task.support_x)
    algorithm.adapt(task.support_x, task.support_y)
    assert [len(rows) for rows in seen] == [10, 10, 10]
    assert set(row for rows in seen for row in rows) == set(range(25))  # 5 were skipped before

    algorithm = build(ways=5, shots=5, query=10, inner_batch=10, inner_steps=8)
    tasks = make_tasks(2, ways=5, shots=5, query=10, seed=3)
    examples = torch.cat([torch.cat([t.support_x, t.query_x]) for t in tasks])
    seen = record_rows(algorithm, examples)
    algorithm.meta_gradient(tasks, step=0)
    # per task: 8 inner forwards of 10, then one forward of all 75 for the log
    assert [len(rows) for rows in seen] == [10] * 8 + [75] + [10] * 8 + [75]
    assert set(row for rows in seen[:8] for row in rows) == set(range(75))
    assert set(row for rows in seen[9:17] for row in rows) == set(range(75, 150))


def test_mini_batches_reshuffle_every_pass_and_carry_partial_batches_over():
    batches = reptile.mini_batches(5, 3, 4, np.random.default_rng([0, 7, 1]))
    rng = np.random.default_rng([0, 7, 1])
    passes = np.concatenate([rng.permutation(5) for _ in range(3)])
    assert [b.tolist() for b in batches] == [passes[i:i + 3].tolist() for i in range(0, 12, 3)]
    assert reptile.mini_batches(5, 3, 0, np.random.default_rng(0)) == []
    # a batch larger than the task holds some examples twice, as the reference's does
    assert sorted(Counter(reptile.mini_batches(2, 3, 1, np.random.default_rng(0))[0].tolist()).values()) == [1, 2]


def test_each_training_task_draws_its_batches_from_its_own_seed():
    algorithm = build(ways=3, shots=2, query=2, inner_batch=4, inner_steps=3)
    tasks = make_tasks(2, ways=3, shots=2, query=2, seed=5)
    examples = torch.cat([torch.cat([t.support_x, t.query_x]) for t in tasks])
    seen = record_rows(algorithm, examples)
    algorithm.meta_gradient(tasks, step=9)
    for position, start in ((0, 0), (1, 4)):
        expected = reptile.mini_batches(12, 4, 3, np.random.default_rng([algorithm.config.seed, 9, position]))
        offset = 12 * position
        assert [[r - offset for r in rows] for rows in seen[start:start + 3]] == [b.tolist() for b in expected]


def running_statistics(algorithm):
    return [t.clone() for block in algorithm.model.blocks for t in (block.norm.running_mean, block.norm.running_var)]


@pytest.mark.parametrize("reptile_eval", ["transductive", "non_transductive"])
def test_inductive_batch_norm_predicts_each_query_on_its_own_and_meta_test_changes_nothing(reptile_eval):
    algorithm = build(batch_norm="inductive", reptile_eval=reptile_eval, inner_steps=2, eval_inner_steps=3)
    start = running_statistics(algorithm)
    algorithm.meta_gradient(make_tasks(2), step=0)
    trained = running_statistics(algorithm)
    assert all(not torch.equal(a, b) for a, b in zip(start, trained))  # the inner loop updates them
    task = make_tasks(1, seed=4)[0]
    adapted = algorithm.adapt(task.support_x, task.support_y)
    together = algorithm.predict(adapted, task.query_x)
    for i in range(len(task.query_x)):
        torch.testing.assert_close(algorithm.predict(adapted, task.query_x[i:i + 1]), together[i:i + 1],
                                   rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(trained, running_statistics(algorithm)))
    # with running statistics, the batch of support images plus one query changes nothing either
    params = adapted["params"]
    alone = algorithm.model.functional_forward(params, task.query_x[:1], False)
    torch.testing.assert_close(together[:1], alone, rtol=1e-12, atol=1e-12)


def test_transductive_batch_norm_keeps_reptile_eval_meaning():
    algorithm = build(reptile_eval="transductive", eval_inner_steps=2)
    task = make_tasks(1)[0]
    adapted = algorithm.adapt(task.support_x, task.support_y)
    together = algorithm.predict(adapted, task.query_x)
    # one batch of queries: a query's outputs depend on the others
    assert not torch.allclose(algorithm.predict(adapted, task.query_x[:1]), together[:1])
    algorithm.config.reptile_eval = "non_transductive"
    params = adapted["params"]
    expected = torch.cat([algorithm.model.functional_forward(params, torch.cat([task.support_x, q[None]]))[-1:]
                          for q in task.query_x])
    torch.testing.assert_close(algorithm.predict(adapted, task.query_x), expected, rtol=0, atol=0)


# openai/supervised-reptile written out (reptile.py `Reptile.train_step` and `evaluate`, `_mini_batches`;
# models.py: `optimizer.minimize(loss)` of the per-example cross-entropy vector, so its gradient is
# the sum over the mini-batch; tf.train.AdamOptimizer(beta1=0), whose epsilon is added to sqrt(v)
# before the bias correction). Only the backbone's forward is fewshot's; the mini-batch order is
# drawn from fewshot's seeds, (seed, step, position) at meta-train and eval_seed at meta-test.

def reference_batches(count, batch_size, batches, seed):
    """_mini_batches without replacement: reshuffle at every pass, carry a partial batch over."""
    rng, rows, current = np.random.default_rng(seed), [], []
    while len(rows) < batches:
        for index in rng.permutation(count):
            current.append(int(index))
            if len(current) == batch_size:
                rows.append(current)
                current = []
                if len(rows) == batches:
                    break
    return rows


def reference_inner_loop(model, params, x, y, steps, lr, batch_size, seed, slots, optimizer="adam",
                         epsilon=1e-8, bn_training=True):
    """`steps` minimize steps from `params` on (x, y); `slots` ({"t": steps so far, "v": second moments})
    is the Adam state, updated in place."""
    params = {name: p.detach().clone() for name, p in params.items()}
    for rows in reference_batches(len(x), batch_size or len(x), steps, seed):
        leaves = {name: p.requires_grad_() for name, p in params.items()}
        with torch.enable_grad():
            loss = F.cross_entropy(model.functional_forward(leaves, x[rows], bn_training), y[rows], reduction="sum")
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        with torch.no_grad():
            if optimizer == "sgd":
                params = {name: p - lr * grads[name] for name, p in leaves.items()}
                continue
            slots["t"] += 1
            rate = lr * (1 - 0.999 ** slots["t"]) ** 0.5  # / (1 - beta1 ** t) = 1 with beta1 = 0
            for name, p in leaves.items():
                slots["v"][name] = 0.999 * slots["v"][name] + 0.001 * grads[name] ** 2
                params[name] = p - rate * grads[name] / (slots["v"][name].sqrt() + epsilon)
    return params


def fresh_slots(model):
    return {"t": 0, "v": {name: torch.zeros_like(p) for name, p in model.named_parameters()}}


def reference_meta_step(algorithm, tasks, step, slots, per_task_slots=False, lr=None, **inner):
    """train_step: each task from theta (only the trainable variables restored between tasks, so the
    Adam slots carry on), then theta + meta_step * (mean of the tasks' final weights - theta)."""
    config, model = algorithm.config, algorithm.model
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    finals = []
    for position, task in enumerate(tasks):
        x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
        finals.append(reference_inner_loop(model, theta, x, y, config.inner_steps, lr or config.inner_lr,
                                           config.inner_batch, [config.seed, step, position],
                                           fresh_slots(model) if per_task_slots else slots, **inner))
    return {name: theta[name] + config.meta_lr * (sum(f[name] for f in finals) / len(finals) - theta[name])
            for name in theta}


def our_meta_step(algorithm, tasks, step):
    optimizer, _ = make_optimizer(algorithm, algorithm.config)
    algorithm.zero_grad()
    algorithm.meta_gradient(tasks, step)
    optimizer.step()
    return {name: p.detach().clone() for name, p in algorithm.model.named_parameters()}


def assert_same_weights(ours, reference, **tolerance):
    # a conv bias before batch norm changes no output and gets a gradient of rounding size only,
    # which Adam with epsilon 0 turns into steps of order lr: it is left out
    for name in ours:
        if not name.endswith("conv.bias"):
            torch.testing.assert_close(ours[name], reference[name], **tolerance)


def test_two_meta_steps_are_the_references_with_the_adam_state_carried_across_tasks_and_steps(monkeypatch):
    """With epsilon 0 Adam is invariant to the scale of the gradient, so the reference's summed loss
    and fewshot's mean give the same steps; the epsilon (1e-8, added where each optimizer adds it)
    is the only difference, and docs/faithfulness.md states it."""
    monkeypatch.setattr(reptile, "ADAM_EPS", 0.0)
    algorithm = build(inner_steps=3, inner_batch=4, meta_lr=0.7, lr_schedule="step")
    slots = fresh_slots(algorithm.model)
    for step, seed in ((0, 0), (1, 1)):
        tasks = make_tasks(2, seed=seed)
        reference = reference_meta_step(algorithm, tasks, step, slots, epsilon=0.0)
        ours = our_meta_step(algorithm, tasks, step)
        assert_same_weights(ours, reference, rtol=1e-9, atol=1e-12)
        with torch.no_grad():  # both go on from the same weights
            for name, p in algorithm.model.named_parameters():
                p.copy_(reference[name])
    assert slots["t"] == int(algorithm.inner_adam.step) == 2 * 2 * 3  # meta-steps x tasks x inner steps
    # the state carried from task to task matters: a fresh Adam per task is another step
    tasks = make_tasks(2, seed=2)
    per_task = reference_meta_step(algorithm, tasks, 2, None, per_task_slots=True, epsilon=0.0)
    ours = our_meta_step(algorithm, tasks, 2)
    assert any(not torch.allclose(ours[n], per_task[n], rtol=0, atol=1e-6) for n in ours
               if not n.endswith("conv.bias"))


def test_reptile_with_inner_sgd_takes_the_references_step_with_the_rate_divided_by_the_batch():
    """The reference's --sgd minimizes the summed loss of a mini-batch of B; fewshot's inner SGD the
    mean, so inner_lr here is the reference's --learning-rate times B."""
    algorithm = build(inner_optimizer="sgd", inner_steps=3, inner_batch=4, inner_lr=0.05, meta_lr=0.3,
                      lr_schedule="step")
    tasks = make_tasks(2)
    reference = reference_meta_step(algorithm, tasks, 7, None, lr=0.05 / 4, optimizer="sgd")
    assert_same_weights(our_meta_step(algorithm, tasks, 7), reference, rtol=1e-10, atol=1e-12)


def test_meta_test_starts_from_the_trained_adam_state_and_restores_it(monkeypatch):
    monkeypatch.setattr(reptile, "ADAM_EPS", 0.0)
    algorithm = build(inner_steps=3, inner_batch=4, eval_inner_steps=5)
    slots = fresh_slots(algorithm.model)
    reference_meta_step(algorithm, make_tasks(2), 0, slots, epsilon=0.0)  # the reference's slots after it
    algorithm.meta_gradient(make_tasks(2), step=0)
    before = algorithm.inner_adam.read()
    task = make_tasks(1, seed=2)[0]
    first = algorithm.adapt(task.support_x, task.support_y)["params"]
    second = algorithm.adapt(task.support_x, task.support_y)["params"]
    after = algorithm.inner_adam.read()
    assert after["step"] == before["step"] == 6
    assert all(torch.equal(after["exp_avg_sq"][n], before["exp_avg_sq"][n]) for n in before["exp_avg_sq"])
    assert all(torch.equal(first[n], second[n]) for n in first)
    # the reference's evaluate saves and restores its whole state around the task, so the task starts
    # from the slots meta-training left
    theta = dict(algorithm.model.named_parameters())
    expected = reference_inner_loop(algorithm.model, theta, task.support_x, task.support_y, 5, 0.01, 4,
                                    [algorithm.config.eval_seed], slots, epsilon=0.0, bn_training=False)
    from_fresh = reference_inner_loop(algorithm.model, theta, task.support_x, task.support_y, 5, 0.01, 4,
                                      [algorithm.config.eval_seed], fresh_slots(algorithm.model), epsilon=0.0,
                                      bn_training=False)
    assert_same_weights(first, expected, rtol=1e-9, atol=1e-12)
    assert any(not torch.allclose(first[n], from_fresh[n], rtol=0, atol=1e-9) for n in first
               if not n.endswith("conv.bias"))


@pytest.mark.parametrize("preset,inner,evaluation", [
    ("reptile-omniglot-5w1s", 5, 5), ("reptile-omniglot-5w5s", 10, 6), ("reptile-miniimagenet-5w1s", 3, 3),
    ("reptile-miniimagenet-5w5s", 10, 15)])
def test_reptile_presets_take_the_references_inner_batch_at_meta_train_and_meta_test(preset, inner, evaluation):
    """--inner-batch and --eval-batch of the README commands each preset quotes."""
    from fewshot.config import load_preset
    config = load_preset(preset)
    assert (config.inner_batch, config.eval_inner_batch) == (inner, evaluation)


def test_meta_test_adapts_on_mini_batches_of_eval_inner_batch():
    algorithm = build(ways=5, shots=5, query=1, inner_batch=10, eval_inner_batch=6, eval_inner_steps=7)
    task = make_tasks(1, ways=5, shots=5, query=1)[0]
    seen = record_rows(algorithm, task.support_x)
    algorithm.adapt(task.support_x, task.support_y)
    assert seen == reference_batches(25, 6, 7, [algorithm.config.eval_seed])
    algorithm.config.eval_inner_batch = None  # null: inner_batch at meta-test too
    seen.clear()
    algorithm.adapt(task.support_x, task.support_y)
    assert seen == reference_batches(25, 10, 7, [algorithm.config.eval_seed])


def test_adam_step_is_torch_adam_with_beta1_zero():
    algorithm = build(inner_steps=4, inner_batch=None)
    task = make_tasks(1)[0]
    params = {n: p.detach().clone().requires_grad_() for n, p in algorithm.model.named_parameters()}
    adam = torch.optim.Adam(params.values(), lr=0.01, betas=(0.0, 0.999))
    for _ in range(4):
        loss = algorithm.family.loss(algorithm.model.functional_forward(params, task.support_x), task.support_y)
        adam.zero_grad()
        loss.backward()
        adam.step()
    ours = algorithm.train_on(task.support_x, task.support_y, 4, 0.01, [0])
    for name in ours:
        # a conv bias before batch norm has a gradient of rounding size, which Adam scales
        # up to steps of order lr: there only the order of the rounding is compared
        tolerance = dict(rtol=0, atol=1e-7) if name.endswith("conv.bias") else dict(rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(ours[name], params[name].detach(), **tolerance)


def test_a_checkpoint_from_before_the_adam_state_loads_with_a_fresh_one():
    algorithm = build()
    old = {k: v for k, v in algorithm.state_dict().items() if not k.startswith("inner_adam.")}
    assert len(old) < len(algorithm.state_dict())
    other = build()
    other.meta_gradient(make_tasks(2))
    other.load_state_dict(old)  # strict: no missing-key error
    assert int(other.inner_adam.step) == 0


@pytest.fixture
def data(tmp_path):
    return str(tagged_dataset(tmp_path / "data", classes=80))


def test_a_resumed_reptile_run_equals_an_uninterrupted_one_adam_state_included(tmp_path, data):
    config = tiny_config(data=data, algorithm="reptile", inner_optimizer="adam", inner_lr=0.01, inner_batch=2,
                         inner_steps=3, eval_inner_steps=3, meta_optimizer="sgd", meta_lr=1.0, lr_schedule="linear",
                         min_meta_lr=0.0, steps=7, save_every=2, val_every=3, query=2)
    train(config, tmp_path / "full", progress=False)
    train(config, tmp_path / "part", progress=False, stop_after=4)
    stripped = checkpoint.load(tmp_path / "part" / "last.pt")
    assert int(stripped["algorithm"]["inner_adam.step"]) == 4 * 2 * 3  # steps x meta-batch x inner steps
    train(out=tmp_path / "part", resume=True, progress=False)
    full, part = (checkpoint.load(tmp_path / run / "last.pt")["algorithm"] for run in ("full", "part"))
    assert full.keys() == part.keys() and int(full["inner_adam.step"]) == 7 * 2 * 3
    for name in full:
        assert torch.equal(full[name], part[name]), name
    # without the saved state the continued run would differ: the state matters
    stripped["algorithm"] = {k: v for k, v in stripped["algorithm"].items() if not k.startswith("inner_adam.")}
    (tmp_path / "forgetful").mkdir()
    (tmp_path / "forgetful" / "config.yaml").write_bytes((tmp_path / "part" / "config.yaml").read_bytes())
    checkpoint.save(tmp_path / "forgetful" / "last.pt", **stripped)
    train(out=tmp_path / "forgetful", resume=True, progress=False)
    forgetful = checkpoint.load(tmp_path / "forgetful" / "last.pt")["algorithm"]
    assert not torch.equal(forgetful["model.head.weight"], full["model.head.weight"])


def test_validation_during_training_leaves_the_adam_state_alone(tmp_path, data):
    algorithm = build(inner_steps=2, inner_batch=3, eval_inner_steps=4)
    algorithm.meta_gradient(make_tasks(2), step=0)
    before = algorithm.inner_adam.read()

    class Sampler:
        def batch(self, index, size):
            return make_tasks(1, seed=10 + index)

    evaluate(algorithm, Sampler(), 3)
    after = algorithm.inner_adam.read()
    assert after["step"] == before["step"]
    assert all(torch.equal(after["exp_avg_sq"][n], before["exp_avg_sq"][n]) for n in before["exp_avg_sq"])
