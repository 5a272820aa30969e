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


@pytest.mark.parametrize("shared", [".norm.", "blocks."], ids=["norm-shared", "body-shared"])
@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize("bn_steps", [1, 3])
def test_batched_forward_is_each_tasks_own_forward(downsample, bn_steps, shared):
    torch.manual_seed(0)
    model = models.build(tiny_config(downsample=downsample, per_step_bn=bn_steps > 1, inner_steps=3,
                                     eval_inner_steps=3)).double()  # per_step_bn: a row per inner step
    assert model.can_batch_tasks
    x = torch.rand(3, 5, 1, 16, 16, dtype=torch.float64)
    # per-task weights, except the batch-norm weights (MAML++) or the whole body (ANIL): shared by the tasks
    params = {n: p + 0.1 * torch.randn(3, *p.shape, dtype=torch.float64) if shared not in n else p
              for n, p in model.named_parameters()}
    for step in range(bn_steps):
        batched = model.batched_forward(params, x, bn_step=step)
        for t in range(3):
            own = {n: p[t] if shared not in n else p for n, p in params.items()}
            torch.testing.assert_close(batched[t], model.functional_forward(own, x[t], bn_step=step),
                                       rtol=1e-12, atol=1e-12)
    if bn_steps > 1:  # each step uses its own batch-norm weights
        before = [model.batched_forward(params, x, bn_step=step) for step in (1, 2)]
        with torch.no_grad():
            model.blocks[0].norm.weight[1] += 1
        assert not torch.allclose(model.batched_forward(params, x, bn_step=1), before[0])
        torch.testing.assert_close(model.batched_forward(params, x, bn_step=2), before[1], rtol=0, atol=0)


def test_batched_forward_is_the_vmap_of_the_functional_forward():
    # the hand-written grouped convolutions compute what torch.func.vmap would
    torch.manual_seed(0)
    for downsample in ("stride", "maxpool"):
        model = models.build(tiny_config(downsample=downsample)).double()
        params = {n: p + 0.1 * torch.randn(4, *p.shape, dtype=torch.float64) for n, p in model.named_parameters()}
        x = torch.rand(4, 6, 1, 16, 16, dtype=torch.float64)
        vmapped = torch.func.vmap(model.functional_forward)(params, x)
        torch.testing.assert_close(model.batched_forward(params, x), vmapped, rtol=1e-12, atol=1e-12)


def test_batched_inductive_forward_at_test_uses_the_running_statistics():
    torch.manual_seed(0)
    for per_step_bn in (False, True):
        model = models.build(tiny_config(batch_norm="inductive", per_step_bn=per_step_bn)).double()
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
        params = {n: p + 0.1 * torch.randn(2, *p.shape, dtype=torch.float64) for n, p in model.named_parameters()}
        x = torch.rand(2, 5, 1, 16, 16, dtype=torch.float64)
        out = model.batched_forward(params, x, bn_training=False, bn_step=1)
        for t in range(2):
            own = {n: p[t] for n, p in params.items()}
            torch.testing.assert_close(out[t], model.functional_forward(own, x[t], bn_training=False, bn_step=1),
                                       rtol=1e-12, atol=1e-12)
        assert model.queued_statistics == []


def test_both_batch_norms_batch_but_a_feature_extractor_does_not():
    assert models.build(tiny_config(batch_norm="inductive")).can_batch_tasks
    assert models.build(tiny_config(batch_norm="transductive")).can_batch_tasks
    assert not models.build(tiny_config(head=False)).can_batch_tasks  # ProtoNets: nothing to adapt per task


def test_batched_inductive_forward_normalizes_by_batch_and_queues_the_statistics():
    torch.manual_seed(0)
    model = models.build(tiny_config(batch_norm="inductive")).double()
    params = {n: p.expand(2, *p.shape) for n, p in model.named_parameters()}
    x = torch.rand(2, 5, 1, 16, 16, dtype=torch.float64)
    out = model.batched_forward(params, x)
    assert model.blocks[0].norm.running_mean.abs().sum() == 0  # nothing updated yet ...
    assert len(model.queued_statistics) == 1 and model.queued_statistics[0][1][0].shape == (2, 2, 4)
    model.update_running_statistics()  # ... until the queue is applied, task after task
    loop = models.build(tiny_config(batch_norm="inductive")).double()
    loop.load_state_dict(model.state_dict() | {k: v for k, v in loop.state_dict().items() if "running" in k})
    own = dict(loop.named_parameters())
    for t in range(2):
        torch.testing.assert_close(out[t], loop.functional_forward(own, x[t]), rtol=1e-12, atol=1e-12)
    for name, buffer in loop.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buffer, rtol=1e-12, atol=1e-14)
    assert model.queued_statistics == []


@pytest.mark.parametrize("leaky_relu,negative_slope", [(False, 0.0), (True, 0.01)])
def test_the_activation_is_the_one_configured(leaky_relu, negative_slope):
    # MAML++'s authors' VGGReLUNormNetwork: conv, batch norm, F.leaky_relu (slope 0.01), max-pool
    torch.manual_seed(0)
    model = models.build(tiny_config(leaky_relu=leaky_relu)).double()
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)

    def written_out(slope):
        h = x
        for block in model.blocks:
            h = torch.nn.functional.batch_norm(block.conv(h), None, None, block.norm.weight, block.norm.bias,
                                               training=True)
            h = torch.nn.functional.max_pool2d(torch.where(h > 0, h, slope * h), 2)
        return model.head(h.flatten(1))

    out = model(x, bn_training=True)
    torch.testing.assert_close(out, written_out(negative_slope), rtol=1e-12, atol=1e-12)
    assert (out - written_out(0.01 - negative_slope)).abs().max() > 1e-4  # the other one is not it
