"""ResNet-12 and WRN-28-10: feature sizes, the functional forward, batch-norm modes."""
import pytest
import torch

from fewshot import models
from fewshot.errors import FewshotError

from helpers import tiny_config


def build(model, **overrides):
    torch.manual_seed(0)
    config = tiny_config(model=model, channels=3, image_size=32, ways=5, **overrides)
    return models.build(config)


def resnet12_size(widths=(64, 160, 320, 640), channels=3):
    """Per stage: three 3x3 convolutions without bias, each with batch norm (2 numbers per
    channel), and a 1x1 shortcut convolution with its batch norm."""
    total, previous = 0, channels
    for width in widths:
        total += 9 * previous * width + 2 * 9 * width * width + 3 * 2 * width + previous * width + 2 * width
        previous = width
    return total


def wrn28_10_size(channels=3):
    """A 3x3 stem to 16 channels, then 3 groups of 4 pre-activation blocks (batch norm, 3x3 conv,
    batch norm, 3x3 conv; a 1x1 shortcut where the width changes) of widths 160, 320, 640,
    then a last batch norm."""
    total, previous = 9 * channels * 16, 16
    for width in (160, 320, 640):
        for block in range(4):
            total += 2 * previous + 9 * previous * width + 2 * width + 9 * width * width
            total += previous * width if previous != width else 0
            previous = width
    return total + 2 * 640


@pytest.mark.parametrize("model,parameters", [("resnet12", resnet12_size()), ("wrn28_10", wrn28_10_size())])
def test_the_papers_networks_have_640_features_and_their_size(model, parameters):
    network = build(model, head=False)
    assert network.features_size == 640
    count = sum(p.numel() for p in network.parameters())
    assert count == parameters
    # the published sizes: 12.4M (ResNet-12) and 36.5M (WRN-28-10)
    assert round(count / 1e5) == {"resnet12": 124, "wrn28_10": 365}[model]
    with torch.no_grad():
        assert network(torch.randn(2, 3, 32, 32)).shape == (2, 640)


@pytest.mark.parametrize("model,widths", [("resnet12", [4, 6, 8, 10]), ("wrn28_10", [4, 6, 8, 10])])
def test_functional_forward_uses_the_given_parameters_and_leaves_the_module_alone(model, widths):
    network = build(model, widths=widths).double()
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    params = dict(network.named_parameters())
    out = network.functional_forward(params, x)
    assert out.shape == (6, 5)
    torch.testing.assert_close(out, network(x))
    shifted = {name: p + 0.01 for name, p in params.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    assert not torch.allclose(network.functional_forward(shifted, x), out)
    assert all(torch.equal(before[n], p) for n, p in network.named_parameters())
    grads = torch.autograd.grad(out.pow(2).sum(), list(params.values()))  # every weight is used
    assert all(g.abs().sum() > 0 for g in grads)


def test_a_second_order_gradient_through_an_inner_step_matches_finite_differences():
    network = build("resnet12", widths=[2, 3, 3, 4]).double()
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    names = [n for n, _ in network.named_parameters()]

    def meta_loss(values):
        params = dict(zip(names, values))
        inner = torch.nn.functional.cross_entropy(network.functional_forward(params, x), y)
        grads = torch.autograd.grad(inner, values, create_graph=True)
        adapted = {n: p - 0.1 * g for n, p, g in zip(names, values, grads)}
        return torch.nn.functional.cross_entropy(network.functional_forward(adapted, x), y)

    values = [p.detach().clone().requires_grad_(True) for p in network.parameters()]
    analytic = torch.autograd.grad(meta_loss(values), values)
    i = names.index("stages.1.convs.0.weight")
    direction = torch.randn_like(values[i])
    eps = 1e-5
    with torch.no_grad():
        plus = [v + eps * direction if k == i else v for k, v in enumerate(values)]
        minus = [v - eps * direction if k == i else v for k, v in enumerate(values)]
    numeric = (meta_loss([v.requires_grad_(True) for v in plus]) -
               meta_loss([v.requires_grad_(True) for v in minus])) / (2 * eps)
    assert abs(numeric.item() - (analytic[i] * direction).sum().item()) < 1e-6


def test_inductive_batch_norm_uses_running_statistics_at_test_only():
    network = build("resnet12", widths=[4, 4, 4, 4], batch_norm="inductive")
    x = torch.randn(8, 3, 16, 16)
    params = dict(network.named_parameters())
    one, batch = network.functional_forward(params, x[:1], bn_training=False), \
        network.functional_forward(params, x, bn_training=False)
    torch.testing.assert_close(one, batch[:1])  # no batch statistics at test: a row is on its own
    transductive = build("resnet12", widths=[4, 4, 4, 4])
    params = dict(transductive.named_parameters())
    assert not torch.allclose(transductive.functional_forward(params, x[:1] * 1, bn_training=False)[0],
                              transductive.functional_forward(params, x, bn_training=False)[0])


def test_bad_widths_and_too_small_images_are_refused():
    with pytest.raises(FewshotError, match="takes 4 widths"):
        build("resnet12", widths=[8, 8])
    with pytest.raises(FewshotError, match="16 pixels or more"):
        models.build(tiny_config(model="resnet12", image_size=8))
