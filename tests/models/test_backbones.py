"""What every backbone shares (models/base.py): one forward run with explicit parameters,
parameter roles, one batch-norm momentum, and the registry."""
import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from fewshot import models
from fewshot.errors import FewshotError
from fewshot.models.base import BN_MOMENTUM

from helpers import tiny_config

CONFIGS = {
    "conv4": dict(),
    "conv4-per-step": dict(per_step_bn=True, inner_steps=2, eval_inner_steps=2),
    "conv4-inductive": dict(batch_norm="inductive"),
    "resnet12": dict(model="resnet12", widths=[2, 3, 3, 4], channels=3, image_size=16),
    "resnet12-inductive": dict(model="resnet12", widths=[2, 3, 3, 4], channels=3, image_size=16,
                               batch_norm="inductive"),
    "wrn28_10": dict(model="wrn28_10", widths=[2, 3, 4, 5], channels=3, image_size=16),
    "mlp": dict(model="mlp", dataset="sinusoid", hidden=[5, 6], in_features=1, out_features=1, ways=1),
}


def build(name):
    torch.manual_seed(0)
    return models.build(tiny_config(**CONFIGS[name])).double()


def example(name, rows=6):
    config = tiny_config(**CONFIGS[name])
    if config.model == "mlp":
        return torch.randn(rows, 1, dtype=torch.float64)
    return torch.randn(rows, config.channels, config.image_size, config.image_size, dtype=torch.float64)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("bn_training", [True, False])
def test_functional_forward_is_functional_call_of_the_forward(name, bn_training):
    # the cached swap computes what torch.func.functional_call computes, gradients included,
    # and leaves the module's own tensors in place
    model = build(name)
    x = example(name)
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: (p + 0.05 * torch.randn_like(p)).requires_grad_() for n, p in own.items()}
    ours = model.functional_forward(params, x, bn_training, bn_step=1)
    grads = torch.autograd.grad(ours.pow(2).sum(), list(params.values()))
    ours_buffers = {n: b.clone() for n, b in model.named_buffers()}
    for n, b in model.named_buffers():  # the running statistics as before
        b.copy_(buffers[n])
    reference = torch.func.functional_call(model, params, (x,), {"bn_training": bn_training, "bn_step": 1})
    reference_grads = torch.autograd.grad(reference.pow(2).sum(), list(params.values()))
    assert torch.equal(ours, reference)
    for n, b in model.named_buffers():  # an inductive forward updates the running statistics alike
        assert torch.equal(ours_buffers[n], b)
    for g, r in zip(grads, reference_grads):
        assert torch.equal(g, r)
    for n, p in model.named_parameters():
        assert isinstance(p, nn.Parameter) and torch.equal(p, own[n])


def test_the_module_gets_its_own_tensors_back_when_the_forward_fails():
    model = build("conv4")
    own = dict(model.named_parameters())
    params = {n: torch.zeros_like(p) for n, p in own.items()}
    with pytest.raises(RuntimeError):
        model.functional_forward(params, torch.randn(2, 5, 16, 16, dtype=torch.float64))  # 5 channels, not 1
    assert all(p is own[n] for n, p in model.named_parameters())


def test_a_deep_copy_runs_with_its_own_tensors():
    model = build("conv4")
    x = example("conv4")
    params = dict(model.named_parameters())
    model.functional_forward(params, x)  # the slots are found and cached ...
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    zeros = dict(twin.named_parameters())
    # ... and the copy's cache holds the copy's slots, not the original's
    assert torch.equal(twin.functional_forward(zeros, x), torch.zeros(6, 3, dtype=torch.float64))
    assert not torch.equal(model.functional_forward(params, x), torch.zeros(6, 3, dtype=torch.float64))
    assert all(p is zeros[n] for n, p in twin.named_parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_features_only_stops_before_the_head(name):
    model = build(name)
    x = example(name)
    params = dict(model.named_parameters())
    features = model.features(params, x)
    torch.testing.assert_close(model.head(features), model.functional_forward(params, x), rtol=0, atol=0)


def roles_by_rule(model):
    """The roles the way a reader of each network's definition names them."""
    head = {f"head.{n}" for n, _ in model.head.named_parameters()} if not isinstance(
        model, models.mlp.MLP) else {f"layers.{len(model.layers) - 1}.{n}" for n in ("weight", "bias")}
    norms = {f"{m}.{n}" for m, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
             for n, _ in module.named_parameters()}
    return {n: "head" if n in head else "batch_norm" if n in norms else "body" for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parameter_has_its_role(name):
    model = build(name)
    roles = model.parameter_roles()
    assert roles == roles_by_rule(model)
    assert list(roles) == [n for n, _ in model.named_parameters()]
    assert "head" in roles.values() and "body" in roles.values()
    if name != "mlp":
        assert "batch_norm" in roles.values()


def test_the_resnets_batch_norm_parameters_are_batch_norm_whatever_their_names():
    # "stages.0.norms.1.weight" and "stages.0.shortcut_norm.bias" hold no ".norm."
    roles = build("resnet12").parameter_roles()
    assert roles["stages.0.norms.1.weight"] == roles["stages.2.shortcut_norm.bias"] == "batch_norm"
    assert roles["stages.0.convs.0.weight"] == roles["stages.1.shortcut.weight"] == "body"
    roles = build("wrn28_10").parameter_roles()
    assert roles["blocks.0.norm1.weight"] == roles["norm.bias"] == "batch_norm"


@pytest.mark.parametrize("name", ["conv4", "conv4-per-step", "resnet12", "wrn28_10"])
def test_one_batch_norm_momentum(name):
    norms = [m for m in build(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == BN_MOMENTUM == 0.1 for m in norms)


def test_inductive_running_statistics_move_by_the_momentum():
    # one training forward: running = (1 - m) running + m * batch statistic, m = BN_MOMENTUM
    model = build("conv4-inductive")
    x = example("conv4-inductive")
    norm = model.blocks[0].norm
    with torch.no_grad():
        h = model.blocks[0].conv(x)  # the first batch norm's input
    model.functional_forward(dict(model.named_parameters()), x, True)
    torch.testing.assert_close(norm.running_mean, BN_MOMENTUM * h.mean((0, 2, 3)), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(norm.running_var, (1 - BN_MOMENTUM) + BN_MOMENTUM * h.var((0, 2, 3)),
                               rtol=1e-12, atol=1e-15)


def test_the_registry_lists_the_backbones_and_names_the_choices():
    assert models.BACKBONES.names() == ["conv4", "mlp", "none", "resnet12", "wrn28_10"]
    with pytest.raises(FewshotError, match=r"^unknown model 'resnet99'; choose one of: conv4, mlp, none, "
                                           r"resnet12, wrn28_10$"):
        models.build(tiny_config(model="resnet99"))


def test_the_packages_import_no_submodule_and_leo_registers_no_backbone():
    code = ("import sys\n"
            "import fewshot.algorithms, fewshot.models\n"
            "assert not [m for m in sys.modules if m.startswith(('fewshot.algorithms.', 'fewshot.models.'))]\n"
            "import fewshot.algorithms.leo\n"
            "from fewshot.models import BACKBONES\n"
            "assert BACKBONES.entries == {}, BACKBONES.entries\n"
            "assert BACKBONES.get('none').__module__ == 'fewshot.models.identity'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name,mode", [("conv4", "transductive"), ("conv4-inductive", "inductive"),
                                       ("resnet12", "transductive"), ("resnet12-inductive", "inductive"),
                                       ("wrn28_10", "transductive"), ("mlp", None)])
def test_the_backbone_says_how_its_batch_norm_normalizes_at_test(name, mode):
    model = build(name)
    assert model.batch_norm_mode == mode
    x = example(name)
    params = dict(model.named_parameters())
    alone = model.functional_forward(params, x[:1], bn_training=False)
    in_batch = model.functional_forward(params, x, bn_training=False)[:1]
    # an output depends on the rest of its batch exactly when the mode says transductive
    assert torch.allclose(alone, in_batch, rtol=1e-12, atol=1e-12) == (mode != "transductive")


@pytest.mark.parametrize("name", CONFIGS)
def test_summary_rows_count_every_parameter_once_and_end_at_the_output(name):
    model = build(name)
    running = {n: b.clone() for n, b in model.named_buffers()}
    x = example(name)
    rows = model.summary_rows(x)
    assert sum(count for _, _, count in rows) == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(b, running[n]) for n, b in model.named_buffers())
    assert rows[-1][1] == tuple(model(x).shape)
