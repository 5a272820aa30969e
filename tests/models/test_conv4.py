import pytest
import torch

from fewshot import models
from fewshot.errors import FewshotError
from fewshot.summary import summary

from helpers import tiny_config


@pytest.mark.parametrize("downsample,size,features", [("maxpool", 28, 64), ("stride", 28, 64),
                                                      ("maxpool", 84, 32 * 25)])
def test_both_forms_give_the_documented_shapes(downsample, size, features):
    filters = 32 if size == 84 else 64
    model = models.build(tiny_config(downsample=downsample, image_size=size, filters=filters, ways=5,
                                     channels=3 if size == 84 else 1))
    assert model.head.in_features == features
    x = torch.rand(7, model.blocks[0].conv.in_channels, size, size)
    assert model(x).shape == (7, 5)


def test_functional_forward_uses_the_given_parameters_only():
    model = models.build(tiny_config())
    params = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    out = model.functional_forward(params, torch.rand(4, 1, 16, 16))
    assert torch.equal(out, torch.zeros(4, 3))


def test_transductive_batch_norm_uses_batch_statistics_at_test():
    torch.manual_seed(0)
    model = models.build(tiny_config(batch_norm="transductive"))
    params = dict(model.named_parameters())
    x = torch.rand(6, 1, 16, 16)
    alone = model.functional_forward(params, x[:1], bn_training=False)
    in_batch = model.functional_forward(params, x, bn_training=False)[:1]
    assert not torch.allclose(alone, in_batch)  # the prediction depends on the other images
    assert model.blocks[0].norm.running_mean.abs().sum() == 0  # no running statistics kept


def test_inductive_batch_norm_uses_running_statistics_at_test():
    torch.manual_seed(0)
    model = models.build(tiny_config(batch_norm="inductive"))
    params = dict(model.named_parameters())
    x = torch.rand(6, 1, 16, 16)
    model.functional_forward(params, x, bn_training=True)  # meta-training updates the running statistics
    assert model.blocks[0].norm.running_mean.abs().sum() > 0
    alone = model.functional_forward(params, x[:1], bn_training=False)
    in_batch = model.functional_forward(params, x, bn_training=False)[:1]
    torch.testing.assert_close(alone, in_batch)  # each test image is classified on its own


def test_summary_lists_every_layer_and_the_parameter_count():
    config = tiny_config(downsample="maxpool")
    text = summary(config)
    model = models.build(config)
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in text.splitlines()[-1]
    layers = [line.split()[0] for line in text.splitlines()[2:-1]]
    assert [l for l in layers if l.endswith(".conv")] == [f"blocks.{i}.conv" for i in range(4)]
    assert [l for l in layers if l.endswith(".pool")] == [f"blocks.{i}.pool" for i in range(4)]
    assert layers[-1] == "head"


def test_too_small_images_are_refused():
    with pytest.raises(FewshotError, match="too small"):
        models.build(tiny_config(image_size=8))
