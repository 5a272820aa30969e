import math
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from fewshot import algorithms
from fewshot.config import load_preset, preset_names, validate
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


# ---------------------------------------------------------------------------------------------------
# MAML's objective written out from the paper (Finn et al. 2017, Algorithm 2) on a conv4 written out
# here with torch.nn.functional, in both of its forms: torch's layers (padding 1, batch norm with a
# scale, eps 1e-5) and cbfinn/maml's (TensorFlow's 'SAME' padding, batch norm with a shift only and
# eps 0.001, its batch-norm variables outside the fast weights). Nothing of fewshot's is called.

# the keys that give cbfinn/maml's convention and network (its presets set them)
CBFINN = dict(loss_reduction="sum_div_shots", adapt_bn=False, bn_scale=False, bn_eps=1e-3, conv_padding="tf_same",
              head_init="normal")


def tf_same_pads(side, stride):
    """TensorFlow's 'SAME' padding of a 3x3 kernel along one side: (before, after), from its
    documentation: ceil(side / stride) outputs, the odd pixel after."""
    total = max((math.ceil(side / stride) - 1) * stride + 3 - side, 0)
    return total // 2, total - total // 2


def conv4_written_out(params, x, downsample, cbfinn):
    """4 x [3x3 conv, batch norm with the batch's statistics, ReLU, (2x2 max-pool)], then the
    spatial mean (stride) or the flattened map (maxpool), then the linear head."""
    stride = 2 if downsample == "stride" else 1
    h = x
    for i in range(4):
        weight, bias = params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"]
        if cbfinn:
            (top, bottom), (left, right) = tf_same_pads(h.shape[-2], stride), tf_same_pads(h.shape[-1], stride)
            h = F.conv2d(F.pad(h, (left, right, top, bottom)), weight, bias, stride=stride)
        else:
            h = F.conv2d(h, weight, bias, stride=stride, padding=1)
        mean = h.mean((0, 2, 3), keepdim=True)
        variance = ((h - mean) ** 2).mean((0, 2, 3), keepdim=True)
        h = (h - mean) / torch.sqrt(variance + (1e-3 if cbfinn else 1e-5))
        if not cbfinn:
            h = h * params[f"blocks.{i}.norm.weight"].view(1, -1, 1, 1)
        h = F.relu(h + params[f"blocks.{i}.norm.bias"].view(1, -1, 1, 1))
        if downsample == "maxpool":
            h = F.max_pool2d(h, 2)
    h = h.mean((2, 3)) if downsample == "stride" else h.flatten(1)
    return h @ params["head.weight"].T + params["head.bias"]


def task_loss(logits, labels, shots, cbfinn):
    """The mean cross-entropy, or cbfinn/maml's utils.xent summed: each example's / shots."""
    if cbfinn:
        return (F.cross_entropy(logits, labels, reduction="none") / shots).sum()
    return F.cross_entropy(logits, labels)


def written_out_objective(params, tasks, *, downsample, cbfinn, steps, lr, shots, first_order=False,
                          adapted=lambda name: True):
    """(1/B) sum_i L_query_i(theta'_i), theta'_i after `steps` steps theta <- theta - lr * grad L_support_i
    on the `adapted` parameters (all but batch norm's in the cbfinn form); first order: the inner
    gradients held constant."""
    total = 0.0
    for task in tasks:
        fast = dict(params)
        for _ in range(steps):
            names = [n for n in fast if adapted(n) and not (cbfinn and ".norm." in n)]
            loss = task_loss(conv4_written_out(fast, task.support_x, downsample, cbfinn), task.support_y, shots, cbfinn)
            grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
            fast = {**fast, **{n: fast[n] - lr * g.detach() if first_order else fast[n] - lr * g
                               for n, g in zip(names, grads)}}
        query_logits = conv4_written_out(fast, task.query_x, downsample, cbfinn)
        total = total + task_loss(query_logits, task.query_y, shots, cbfinn) / len(tasks)
    return total


def written_out_gradient(algorithm, tasks, **options):
    params = {n: p.detach().clone().requires_grad_() for n, p in algorithm.model.named_parameters()}
    config = algorithm.config
    objective = written_out_objective(params, tasks, downsample=config.downsample, steps=config.inner_steps,
                                      lr=config.inner_lr, shots=config.shots, **options)
    return dict(zip(params, torch.autograd.grad(objective, list(params.values())))), objective.item()


def both_paths(algorithm, tasks):
    """The meta-gradient by the per-task loop and by the batched pass."""
    gradients = []
    for batched in (False, True):
        algorithm.config.batch_tasks = batched
        assert algorithm.batches_tasks(tasks) == batched
        algorithm.zero_grad(set_to_none=True)
        result = algorithm.meta_gradient(tasks)
        gradients.append(({n: p.grad.clone() for n, p in algorithm.model.named_parameters()}, float(result["loss"])))
    return gradients


FORMS = [  # (downsample, cbfinn form): the torch form on both networks, cbfinn's on both
    ("maxpool", False), ("stride", False), ("stride", True), ("maxpool", True)]


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("downsample,cbfinn", FORMS)
def test_meta_gradient_is_the_written_out_objectives_in_float64(downsample, cbfinn, first_order):
    # 14 pixels: the strided form pads 14 -> 7 at the bottom and right only, 7 -> 4 on both sides
    size = 14 if downsample == "stride" else 16
    algorithm = build(inner_steps=2, inner_lr=0.3, downsample=downsample, first_order=first_order, image_size=size,
                      shots=2, query=3, **(CBFINN if cbfinn else {}))
    tasks = make_tasks(3, shots=2, query=3, size=size)
    expected, loss = written_out_gradient(algorithm, tasks, cbfinn=cbfinn, first_order=first_order)
    if cbfinn:
        assert not any(name.endswith("norm.weight") for name in expected)  # a shift, no scale
    for grads, got_loss in both_paths(algorithm, tasks):
        assert got_loss == pytest.approx(loss, rel=1e-12)
        for name in expected:
            # every tensor gets a gradient worth checking, but a bias just before batch norm, which
            # subtracts it again with the batch mean
            assert expected[name].abs().max() > (0 if name.endswith("conv.bias") else 1e-6), name
            torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("cbfinn", [False, True])
def test_anil_meta_gradient_is_the_written_out_objectives_in_float64(cbfinn):
    algorithm = build(algorithm="anil", inner_steps=2, inner_lr=0.3, downsample="stride", image_size=14,
                      shots=2, query=3, **({k: v for k, v in CBFINN.items() if k != "adapt_bn"} if cbfinn else {}))
    tasks = make_tasks(2, shots=2, query=3, size=14)
    expected, loss = written_out_gradient(algorithm, tasks, cbfinn=cbfinn, adapted=lambda n: n.startswith("head."))
    for grads, got_loss in both_paths(algorithm, tasks):
        assert got_loss == pytest.approx(loss, rel=1e-12)
        for name in expected:
            torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-13, msg=name)


def test_the_two_conventions_differ_by_the_ways_in_the_inner_step_and_the_query_count_in_the_objective():
    """cbfinn/maml's inner gradient is `ways` times the mean loss's (tf.gradients sums the vector of
    losses / K over N * K examples): one step of it is one step of the mean at `ways` times the rate.
    Its meta-objective is the query losses / K summed: `query * ways / shots` times the mean's."""
    task = make_tasks(1, ways=3, shots=2, query=5)[0]
    mean, summed = build(inner_lr=0.3, eval_inner_steps=1), build(inner_lr=0.1, eval_inner_steps=1,
                                                                    loss_reduction="sum_div_shots")
    for a, b in zip(mean.adapt(task.support_x, task.support_y)["params"].values(),
                    summed.adapt(task.support_x, task.support_y)["params"].values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    objective = {}
    for name, algorithm in (("mean", build(inner_steps=0)), ("summed", build(inner_steps=0,
                                                                             loss_reduction="sum_div_shots"))):
        objective[name] = float(algorithm.meta_gradient([task])["loss"])
    assert objective["summed"] == pytest.approx(objective["mean"] * 5 * 3 / 2, rel=1e-12)


def test_without_adapt_bn_the_inner_loop_leaves_batch_norm_as_the_outer_loop_learned_it():
    algorithm = build(adapt_bn=False, eval_inner_steps=3, inner_lr=0.5)
    task = make_tasks(1)[0]
    adapted = algorithm.adapt(task.support_x, task.support_y)["params"]
    moved = {n for n, p in algorithm.model.named_parameters() if not torch.equal(p, adapted[n])}
    roles = algorithm.parameter_roles
    assert moved == {n for n in roles if roles[n] != "batch_norm"} and any(r == "batch_norm" for r in roles.values())


def meta_objective(algorithm, tasks):
    """The MAML objective written out (the torch form of the network): mean query loss after the inner loop."""
    config = algorithm.config
    params = {n: p.detach() for n, p in algorithm.model.named_parameters()}
    with torch.enable_grad():
        params = {n: p.clone().requires_grad_() for n, p in params.items()}
        return written_out_objective(params, tasks, downsample=config.downsample, cbfinn=False,
                                     steps=config.inner_steps, lr=config.inner_lr, shots=config.shots).item()


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


# The presets that take their network and inner loop from cbfinn/maml (MAML and FOMAML, and ANIL,
# which the paper runs as MAML with a head-only inner loop), and those whose sources reduce by the mean
CBFINN_PRESETS = ["omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s", "fomaml-omniglot-5w1s",
                  "anil-omniglot-5w1s", "maml-miniimagenet-5w1s", "maml-miniimagenet-5w5s",
                  "fomaml-miniimagenet-5w1s", "fomaml-miniimagenet-5w5s", "anil-miniimagenet-5w1s",
                  "anil-miniimagenet-5w5s", "lake-anil"]
MEAN_PRESETS = {"omniglot-5w1s-pytorch": "dragen1860/MAML-Pytorch: F.cross_entropy, a mean",
                "metasgd-omniglot-5w1s": "Li et al.: a task's loss is the mean over its examples",
                "metasgd-miniimagenet-5w1s": "the same", "metasgd-miniimagenet-5w5s": "the same",
                "sinusoid-5shot": "cbfinn/maml's mse is a reduce_mean", "sinusoid-10shot": "the same",
                "sinusoid-20shot": "the same"}


@pytest.mark.parametrize("name", CBFINN_PRESETS)
def test_every_preset_from_cbfinn_maml_has_its_loss_scaling_network_and_clipping(name):
    config = validate(load_preset(name))
    assert config.loss_reduction == "sum_div_shots"
    assert (config.bn_scale, config.bn_eps) == (False, 0.001)
    assert config.adapt_bn is (config.algorithm == "anil")  # ANIL's inner loop never touches batch norm
    miniimagenet = config.dataset == "miniimagenet"
    assert config.grad_clip_value == (10 if miniimagenet else None)
    # Omniglot: strided 'SAME' convolutions and a standard-normal output layer; miniImageNet: stride 1
    # (where 'SAME' is padding 1) and a Glorot output layer
    assert (config.conv_padding, config.head_init) == (("symmetric", "xavier") if miniimagenet else
                                                       ("tf_same", "normal"))
    assert config.downsample == ("maxpool" if miniimagenet else "stride")


@pytest.mark.parametrize("name", sorted(MEAN_PRESETS))
def test_presets_whose_source_takes_the_mean_keep_the_mean(name):
    config = validate(load_preset(name))
    assert config.loss_reduction == "mean", MEAN_PRESETS[name]
    assert (config.bn_scale, config.adapt_bn, config.head_init) == (True, True, "xavier")


def test_every_preset_citing_cbfinn_maml_is_checked_above():
    folder = resources.files("fewshot") / "presets"
    citing = {name for name in preset_names() if "cbfinn" in (folder / f"{name}.yaml").read_text()}
    assert citing <= set(CBFINN_PRESETS) | set(MEAN_PRESETS)


def test_no_algorithm_of_the_family_overrides_nn_modules_forward():
    """nn.Module.forward means `module(x)`; the family's forward at inner step k has its own name."""
    for name in ("maml", "anil", "metasgd", "mamlpp"):
        algorithm = build(algorithm=name, per_step_bn=name == "mamlpp")
        assert type(algorithm).forward is torch.nn.Module.forward, name
        assert callable(algorithm.forward_at)
