"""Behaviour of each algorithm of the MAML family and of Prototypical Networks."""
import pytest
import torch

from fewshot import algorithms
from fewshot.config import load_preset
from fewshot.train import make_optimizer, train

from algorithms.test_maml import make_tasks
from helpers import tiny_config

ALGORITHMS = ["maml", "anil", "metasgd", "mamlpp", "reptile", "protonet"]


def build(name, **overrides):
    torch.manual_seed(0)
    extra = {"head": False} if name == "protonet" else {}
    if name == "mamlpp":
        extra.update(per_step_bn=True, msl_epochs=2, steps_per_epoch=10)
    return algorithms.build(tiny_config(algorithm=name, **extra, **overrides)).double()


def support_loss(algorithm, task, adapted):
    if algorithm.config["algorithm"] == "protonet":
        return None
    return algorithm.family.loss(algorithm.predict(adapted, task.support_x), task.support_y).item()


@pytest.mark.parametrize("name", ["maml", "anil", "metasgd", "mamlpp", "reptile"])
def test_adaptation_lowers_the_support_loss(name):
    algorithm = build(name, eval_inner_steps=5, inner_lr=0.05, inner_steps=3)
    task = make_tasks(1, shots=3)[0]
    before = support_loss(algorithm, task, algorithm.adapt(task.support_x, task.support_y, steps=0))
    after = support_loss(algorithm, task, algorithm.adapt(task.support_x, task.support_y))
    assert after < before


@pytest.mark.parametrize("name", ALGORITHMS)
def test_one_meta_step_changes_every_learned_parameter_group(name):
    algorithm = build(name, inner_steps=2)
    optimizer, _ = make_optimizer(algorithm, algorithm.config)
    before = {n: p.detach().clone() for n, p in algorithm.named_parameters()}
    result = algorithm.meta_gradient(make_tasks(2), step=0)
    assert result["loss"] > 0 and 0 <= result["accuracy"] <= 1
    optimizer.step()
    changed = {n for n, p in algorithm.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.blocks.0.conv") for n in changed)


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


def test_mamlpp_loss_weights_sum_to_one_and_anneal_to_the_last_step():
    algorithm = build("mamlpp", inner_steps=4)  # msl over 2 epochs of 10 steps
    history = [algorithm.loss_weights(step) for step in range(0, 30, 5)]
    for weights in history:
        assert len(weights) == 4 and abs(sum(weights) - 1) < 1e-12 and min(weights) > 0 or weights[-1] == 1
    assert history[0] == [0.25] * 4
    firsts = [w[0] for w in history]
    lasts = [w[-1] for w in history]
    assert firsts == sorted(firsts, reverse=True) and lasts == sorted(lasts)
    assert history[-1] == [0.0, 0.0, 0.0, 1.0]  # after msl_epochs only the final step counts


def test_mamlpp_learns_per_layer_per_step_rates_and_per_step_batch_norm():
    algorithm = build("mamlpp", inner_steps=3, eval_inner_steps=3)
    norm = algorithm.model.blocks[0].norm
    assert norm.weight.shape == (4, 4) and norm.running_mean.shape == (4, 4)
    assert all(rates.shape == (3,) for rates in algorithm.step_sizes.values())
    assert sorted(algorithm.step_sizes) == ["blocks/0/conv", "blocks/1/conv", "blocks/2/conv", "blocks/3/conv", "head"]
    algorithm.meta_gradient(make_tasks(2), step=0)
    assert all(rates.grad is not None and rates.grad.abs().sum() > 0 for rates in algorithm.step_sizes.values())
    assert norm.weight.grad[:4].abs().sum() > 0


def test_mamlpp_anneals_the_derivative_order():
    algorithm = build("mamlpp", first_order_epochs=1)  # 10 steps per epoch
    assert not algorithm.second_order(5) and algorithm.second_order(10)


def test_reptile_moves_toward_the_adapted_weights_by_the_meta_step():
    algorithm = build("reptile", inner_steps=3, inner_lr=0.05, meta_optimizer="sgd", meta_lr=0.3,
                      lr_schedule="step")
    tasks = make_tasks(2)
    theta = {n: p.detach().clone() for n, p in algorithm.model.named_parameters()}
    adapted = [algorithm.train_on(torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y]),
                                  3, 0.05, [algorithm.config["seed"], 7, i]) for i, t in enumerate(tasks)]
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
    config.update(data=str(omniglot_cache), steps=2, filters=8, val_every=2, val_tasks=2, log_every=1,
                  eval_inner_steps=min(config["eval_inner_steps"], 3), meta_batch=min(config["meta_batch"], 2),
                  ways=min(config["ways"], 10))
    result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == 2
    evaluated = evaluate_checkpoint(tmp_path / "run", tasks=3, progress=False)
    assert 0 <= evaluated["mean"] <= 1 and evaluated["ways"] == (config["eval_ways"] or config["ways"])
