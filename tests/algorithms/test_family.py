"""Behaviour of each algorithm of the MAML family and of Prototypical Networks."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewshot import algorithms
from fewshot.config import load_preset
from fewshot.data.episodes import Task
from fewshot.optim import make_optimizer
from fewshot.train import train

from algorithms.test_maml import make_tasks
from helpers import scores_by_hand, tiny_config

ALGORITHMS = ["maml", "anil", "metasgd", "mamlpp", "reptile", "protonet"]


def build(name, **overrides):
    torch.manual_seed(0)
    extra = {"head": False} if name == "protonet" else {}
    if name == "mamlpp":
        extra.update(per_step_bn=True, msl_epochs=2, steps_per_epoch=10)
    return algorithms.build(tiny_config(algorithm=name, **extra, **overrides)).double()


def support_loss(algorithm, task, adapted):
    if algorithm.config.algorithm == "protonet":
        return None
    return algorithm.family.loss(algorithm.predict(adapted, task.support_x), task.support_y).item()


@pytest.mark.parametrize("name", ["maml", "anil", "metasgd", "mamlpp", "reptile"])
def test_adaptation_lowers_the_support_loss(name):
    algorithm = build(name, eval_inner_steps=5, inner_lr=0.05, inner_steps=3)
    task = make_tasks(1, shots=3)[0]
    before = support_loss(algorithm, task, algorithm.adapt(task.support_x, task.support_y, steps=0))
    after = support_loss(algorithm, task, algorithm.adapt(task.support_x, task.support_y))
    assert after < before


def structurally_zero(name, parameter_name):
    """Meta-gradients that vanish whatever the data: a conv bias followed by batch norm with batch
    statistics (the norm subtracts any constant per channel), the Meta-SGD rate of such a bias (its
    inner gradient is zero), and for ProtoNets the last batch-norm bias (a shift of every embedding
    leaves the distances unchanged: each image's largest activation in a channel is positive, so the
    ReLU passes the shift to the pooled feature)."""
    if parameter_name.endswith("conv.bias") or parameter_name.endswith("conv/bias"):
        return True
    return name == "protonet" and parameter_name == "model.blocks.3.norm.bias"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_one_meta_step_changes_every_learned_parameter_group(name):
    algorithm = build(name, inner_steps=2)
    optimizer, _ = make_optimizer(algorithm, algorithm.config)
    before = {n: p.detach().clone() for n, p in algorithm.named_parameters()}
    tasks = make_tasks(2)
    result = algorithm.meta_gradient(tasks, step=0)
    # a mean over 2 tasks of 3 x 3 query images (Reptile: its 6 + 9 training images, support and query):
    # a multiple of 1/18 (1/30), not just a number in [0, 1]
    scored = 2 * (15 if name == "reptile" else 9)
    assert abs(scored * float(result["accuracy"]) - round(scored * float(result["accuracy"]))) < 1e-9
    assert math.isfinite(float(result["loss"])) and float(result["loss"]) > 0
    grads = {n: p.grad.clone() for n, p in algorithm.named_parameters()}
    optimizer.step()
    lr = algorithm.config.meta_lr
    moved = set()
    for n, p in algorithm.named_parameters():
        # Adam's first step is exactly -lr * g / (|g| + eps), entry by entry
        torch.testing.assert_close(p.detach() - before[n], -lr * grads[n] / (grads[n].abs() + 1e-8),
                                   rtol=1e-6, atol=1e-15)
        change = (p.detach() - before[n]).abs()
        if change.max() > lr / 2:  # some entry had a gradient far above eps
            moved.add(n)
        if ".norm." in n and p.dim() == 2:  # MAML++'s per-step batch norm: every step's row is learned
            assert all(row.max() > lr / 2 for row in change), n
    expected = {n for n, _ in algorithm.named_parameters() if not structurally_zero(name, n)}
    assert moved == expected
    assert ("model.head.weight" in moved) == (name != "protonet")  # ProtoNets has no output layer
    if name in ("metasgd", "mamlpp"):
        assert any(n.startswith("step_sizes.") for n in moved)


def test_metasgd_learning_rates_receive_gradients():
    algorithm = build("metasgd")
    algorithm.meta_gradient(make_tasks(2))
    grads = [p.grad for p in algorithm.step_sizes.values()]
    assert len(grads) == len(list(algorithm.model.parameters()))
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_anil_leaves_the_body_untouched_in_the_inner_loop():
    algorithm = build("anil", eval_inner_steps=3)
    task = make_tasks(1)[0]
    adapted = algorithm.adapt(task.support_x, task.support_y)["params"]
    for name, p in algorithm.model.named_parameters():
        if name.startswith("head."):
            assert not torch.equal(adapted[name], p)
        else:
            assert torch.equal(adapted[name], p)
    # and the meta-gradient still reaches the body through the outer loop
    algorithm.meta_gradient(make_tasks(2))
    assert algorithm.model.blocks[0].conv.weight.grad.abs().sum() > 0


class ANILReForward(algorithms.ALGORITHMS.get("anil")):
    """ANIL run as MAML runs it: the whole network at every inner step."""
    reuses_features = False


@pytest.mark.parametrize("model,order", [("conv4", "second"), ("conv4", "first"), ("mlp", "second")])
def test_anil_runs_its_body_once_per_task_and_gets_the_meta_gradient_of_running_it_every_step(model, order):
    """The body's features made once per task (support and query) give the meta-gradient,
    loss and adapted head of the whole network run at every inner step, per task and
    batched, in float64; and the body runs twice a task instead of inner steps + 1 times."""
    extra = dict(model="mlp", dataset="sinusoid", ways=1, hidden=[5, 6]) if model == "mlp" else {}
    once = build("anil", inner_steps=3, eval_inner_steps=4, inner_lr=0.3, first_order=order == "first", **extra)
    every = ANILReForward(once.model, once.config, once.family)
    assert once.reuses_features
    if model == "mlp":
        generator = torch.Generator().manual_seed(1)
        tasks = [Task(torch.rand(5, 1, generator=generator, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64,
                      generator=generator), torch.rand(7, 1, generator=generator, dtype=torch.float64),
                      torch.rand(7, 1, generator=generator, dtype=torch.float64)) for _ in range(3)]
    else:
        tasks = make_tasks(3, shots=2, query=3)
    for batched in (False, True):
        results = []
        for algorithm in (once, every):
            algorithm.config.batch_tasks = batched
            assert algorithm.batches_tasks(tasks) == batched
            algorithm.zero_grad(set_to_none=True)
            loss = float(algorithm.meta_gradient(tasks)["loss"])
            results.append((loss, {n: p.grad.clone() for n, p in algorithm.model.named_parameters()}))
        (loss_once, grads_once), (loss_every, grads_every) = results
        assert loss_once == pytest.approx(loss_every, rel=1e-12)
        for name, grad in grads_every.items():
            assert grad.abs().max() > 0 or name.endswith("conv.bias"), name
            torch.testing.assert_close(grads_once[name], grad, rtol=1e-10, atol=1e-13, msg=name)
    adapted_once = once.adapt(tasks[0].support_x, tasks[0].support_y)["params"]
    adapted_every = every.adapt(tasks[0].support_x, tasks[0].support_y)["params"]
    for name, tensor in adapted_every.items():
        torch.testing.assert_close(adapted_once[name], tensor, rtol=1e-10, atol=1e-13, msg=name)
    forwards = []
    for algorithm in (once, every):
        calls, original = [], algorithm.model.functional_forward
        algorithm.model.functional_forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
        algorithm.config.batch_tasks = False
        algorithm.meta_gradient(tasks[:1])
        del algorithm.model.functional_forward
        forwards.append(len(calls))
    assert forwards == [2, 3 + 1]


def test_anil_with_inductive_batch_norm_runs_the_network_at_every_inner_step():
    """Each forward updates the running statistics: ANIL keeps MAML's count of them."""
    assert not build("anil", batch_norm="inductive").reuses_features


def test_mamlpp_loss_weights_sum_to_one_and_anneal_to_the_last_step():
    algorithm = build("mamlpp", inner_steps=4)  # msl over 2 epochs of 10 steps
    history = [algorithm.loss_weights(step) for step in range(0, 30, 5)]
    # epoch e = step // 10 (the weights change once per epoch, as the authors'); the non-final weights are
    # 1/4 - e / 4 / 2, the final one the rest: all dyadic, exact
    assert history == [[0.25] * 4,
                       [0.25] * 4,
                       [0.125] * 3 + [0.625],
                       [0.125] * 3 + [0.625],
                       [0.0, 0.0, 0.0, 1.0],  # after msl_epochs only the final step counts
                       [0.0, 0.0, 0.0, 1.0]]
    # near the end of a 100-epoch span the non-final weights stop at the floor 0.03 / 4
    # (epoch 98: 1/4 - 98 / 400 = 0.005 < 0.0075)
    algorithm.config.msl_epochs = 100
    assert algorithm.loss_weights(985) == pytest.approx([0.0075] * 3 + [1 - 3 * 0.0075], abs=1e-15)


def test_mamlpp_learns_per_tensor_per_step_rates_and_per_step_batch_norm():
    algorithm = build("mamlpp", inner_steps=3, eval_inner_steps=3)
    norm = algorithm.model.blocks[0].norm
    # one batch-norm row per inner step, as the authors' number_of_training_steps_per_iter rows
    assert norm.weight.shape == (3, 4) and norm.running_mean.shape == (3, 4)
    # inner_steps + 1 rates per adapted tensor, as the authors' LSLR (total_num_inner_loop_steps + 1)
    assert all(rates.shape == (4,) for rates in algorithm.step_sizes.values())
    assert sorted(algorithm.step_sizes) == [f"{layer}/{kind}" for layer in
                                            ["blocks/0/conv", "blocks/1/conv", "blocks/2/conv", "blocks/3/conv", "head"]
                                            for kind in ("bias", "weight")]
    algorithm.meta_gradient(make_tasks(2), step=0)
    for rates in algorithm.step_sizes.values():  # steps 0-2 learn; the fourth rate is for a longer meta-test
        assert (rates.grad[:3] != 0).all() and rates.grad[3] == 0
    assert (norm.weight.grad.abs().sum(1) > 0).all()


def test_mamlpp_anneals_the_derivative_order():
    algorithm = build("mamlpp", first_order_epochs=1)  # 10 steps per epoch
    assert not algorithm.second_order(5) and algorithm.second_order(10)


def test_reptile_moves_toward_the_adapted_weights_by_the_meta_step():
    algorithm = build("reptile", inner_steps=3, inner_lr=0.05, meta_optimizer="sgd", meta_lr=0.3,
                      lr_schedule="step")
    tasks = make_tasks(2)
    theta = {n: p.detach().clone() for n, p in algorithm.model.named_parameters()}
    # each task's 3 plain SGD steps on the whole task (no inner batch), written out
    adapted = []
    for position, task in enumerate(tasks):
        x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
        order = np.concatenate([np.random.default_rng([algorithm.config.seed, 7, position]).permutation(len(x))
                                for _ in range(3)]).reshape(3, len(x))
        weights = dict(theta)
        for rows in order:
            leaves = {n: w.detach().requires_grad_() for n, w in weights.items()}
            loss = F.cross_entropy(algorithm.model.functional_forward(leaves, x[rows]), y[rows])
            grads = torch.autograd.grad(loss, list(leaves.values()))
            weights = {n: w.detach() - 0.05 * g for (n, w), g in zip(leaves.items(), grads)}
        adapted.append(weights)
    optimizer, _ = make_optimizer(algorithm, algorithm.config)
    algorithm.meta_gradient(tasks, step=7)
    optimizer.step()
    for name, p in algorithm.model.named_parameters():
        mean = sum(a[name] for a in adapted) / len(adapted)
        torch.testing.assert_close(p.detach(), theta[name] + 0.3 * (mean - theta[name]), rtol=1e-10, atol=1e-12)


def test_reptile_non_transductive_prediction_is_independent_of_the_other_queries():
    algorithm = build("reptile", reptile_eval="non_transductive", eval_inner_steps=2)
    task = make_tasks(1)[0]
    adapted = algorithm.adapt(task.support_x, task.support_y)
    together = algorithm.predict(adapted, task.query_x)
    alone = algorithm.predict(adapted, task.query_x[:1])
    torch.testing.assert_close(together[:1], alone)


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    algorithm = build("protonet")
    task = make_tasks(1, shots=3)[0]
    logits = algorithm.predict(algorithm.adapt(task.support_x, task.support_y), task.query_x)
    params = dict(algorithm.model.named_parameters())
    with torch.no_grad():
        features = algorithm.model.functional_forward(params, torch.cat([task.support_x, task.query_x]))
    support, query = features[:len(task.support_x)], features[len(task.support_x):]
    means = torch.stack([support[task.support_y == c].mean(0) for c in range(3)])
    expected = -((query[:, None, :] - means[None]) ** 2).sum(-1)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)
    assert algorithm.any_number_of_classes


@pytest.mark.parametrize("preset", ["fomaml-omniglot-5w1s", "anil-omniglot-5w1s", "metasgd-omniglot-5w1s",
                                    "mamlpp-omniglot-5w1s", "reptile-omniglot-5w1s", "protonet-omniglot-5w1s"])
def test_each_omniglot_preset_trains_and_evaluates(tmp_path, omniglot_cache, preset):
    from fewshot.evaluate import evaluate_checkpoint
    config = load_preset(preset)
    inner = {"eval_inner_steps": 3} if config.eval_inner_steps > 3 and config.algorithm != "protonet" else {}
    config = config.replace(data=str(omniglot_cache), steps=2, filters=8, val_every=2, val_tasks=2, log_every=1,
                            meta_batch=min(config.meta_batch, 2), ways=min(config.ways, 10), **inner)
    result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == 2
    evaluated = evaluate_checkpoint(tmp_path / "run", tasks=3, progress=False)
    ways = config.eval_ways or config.ways
    assert evaluated["ways"] == ways
    scores = scores_by_hand(evaluated, 3)  # the same 3 seeded test tasks, adapted and scored here
    assert evaluated["scores"] == pytest.approx(scores, abs=1e-12)
    assert evaluated["mean"] == pytest.approx(sum(scores) / 3, abs=1e-12)
