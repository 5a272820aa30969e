"""Algorithms ask the backbone which parameters are batch norm's, the head's or the body's
(parameter_roles), never their names; and they are found through one registry."""
import pytest
import torch

from fewshot import algorithms
from fewshot.data.episodes import Task
from fewshot.errors import FewshotError

from helpers import tiny_config

RESNET = dict(model="resnet12", widths=[2, 3, 3, 4], channels=3, image_size=16)


def build(**overrides):
    torch.manual_seed(0)
    return algorithms.build(tiny_config(**overrides)).double()


def colour_task(ways=3, shots=2, query=2, seed=0, channels=3):
    generator = torch.Generator().manual_seed(seed)
    image = lambda n: torch.rand(n, channels, 16, 16, generator=generator, dtype=torch.float64)
    return Task(image(ways * shots), torch.arange(ways).repeat_interleave(shots),
                image(ways * query), torch.arange(ways).repeat_interleave(query))


def changed_by_adapt(algorithm, task):
    own = dict(algorithm.model.named_parameters())
    adapted = algorithm.adapt(task.support_x, task.support_y)["params"]
    return {n for n, p in adapted.items() if not torch.equal(p, own[n])}


def test_mamlpp_on_a_resnet12_treats_its_batch_norm_parameters_as_batch_norm():
    # the ResNet's batch-norm layers are `norms.j` and `shortcut_norm`: no ".norm." in their names
    algorithm = build(algorithm="mamlpp", **RESNET)
    roles = algorithm.model.parameter_roles()
    norms = {n for n, role in roles.items() if role == "batch_norm"}
    assert len(norms) == 4 * 4 * 2  # 4 stages x (3 + shortcut) layers x (weight, bias)
    assert not any(algorithm.adapts(n) for n in norms)
    # a learned rate per adapted parameter tensor and none for a batch-norm one
    assert set(algorithm.step_sizes) == {n.replace(".", "/") for n in roles if n not in norms}
    # the inner loop moves every weight but the batch norm's
    assert changed_by_adapt(algorithm, colour_task()) == set(roles) - norms
    # the outer loop still learns the batch-norm weights
    algorithm.zero_grad()
    algorithm.meta_gradient([colour_task(seed=1)])
    assert all(algorithm.model.get_parameter(n).grad.abs().sum() > 0 for n in norms)


@pytest.mark.parametrize("model", ["conv4", "resnet12"])
def test_anil_adapts_the_head_only(model):
    algorithm = build(algorithm="anil", **(RESNET if model == "resnet12" else {}))
    task = colour_task(channels=3 if model == "resnet12" else 1)
    assert changed_by_adapt(algorithm, task) == {"head.weight", "head.bias"}


def test_anil_on_the_mlp_adapts_its_last_layer():
    algorithm = build(algorithm="anil", model="mlp", dataset="sinusoid", ways=1, hidden=[5, 6])
    x = torch.linspace(-5, 5, 10, dtype=torch.float64)[:, None]
    adapted = changed_by_adapt(algorithm, Task(x, torch.sin(x), x, torch.sin(x)))
    assert adapted == {"layers.2.weight", "layers.2.bias"}


def test_the_registry_lists_the_algorithms_and_names_the_choices():
    assert algorithms.ALGORITHMS.names() == ["anil", "leo", "maml", "mamlpp", "metasgd", "protonet", "reptile"]
    with pytest.raises(FewshotError, match=r"^unknown algorithm 'mamlxx'; choose one of: anil, leo, maml, "):
        algorithms.build(tiny_config(algorithm="mamlxx"))
