import pytest
import torch
import torch.nn.functional as F

from fewshot import models
from fewshot.models import conv4
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
        batched = model.functional_forward(params, x, tasks=True, bn_step=step)
        for t in range(3):
            own = {n: p[t] if shared not in n else p for n, p in params.items()}
            torch.testing.assert_close(batched[t], model.functional_forward(own, x[t], bn_step=step),
                                       rtol=1e-12, atol=1e-12)
    if bn_steps > 1:  # each step uses its own batch-norm weights
        before = [model.functional_forward(params, x, tasks=True, bn_step=step) for step in (1, 2)]
        with torch.no_grad():
            model.blocks[0].norm.weight[1] += 1
        assert not torch.allclose(model.functional_forward(params, x, tasks=True, bn_step=1), before[0])
        torch.testing.assert_close(model.functional_forward(params, x, tasks=True, bn_step=2), before[1], rtol=0,
                                   atol=0)


def test_batched_forward_is_the_vmap_of_the_functional_forward():
    # the hand-written grouped convolutions compute what torch.func.vmap would
    torch.manual_seed(0)
    for downsample in ("stride", "maxpool"):
        model = models.build(tiny_config(downsample=downsample)).double()
        params = {n: p + 0.1 * torch.randn(4, *p.shape, dtype=torch.float64) for n, p in model.named_parameters()}
        x = torch.rand(4, 6, 1, 16, 16, dtype=torch.float64)
        vmapped = torch.func.vmap(model.functional_forward)(params, x)
        torch.testing.assert_close(model.functional_forward(params, x, tasks=True), vmapped, rtol=1e-12, atol=1e-12)


def test_batched_inductive_forward_at_test_uses_the_running_statistics():
    torch.manual_seed(0)
    for per_step_bn in (False, True):
        model = models.build(tiny_config(batch_norm="inductive", per_step_bn=per_step_bn)).double()
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
        params = {n: p + 0.1 * torch.randn(2, *p.shape, dtype=torch.float64) for n, p in model.named_parameters()}
        x = torch.rand(2, 5, 1, 16, 16, dtype=torch.float64)
        out = model.functional_forward(params, x, tasks=True, bn_training=False, bn_step=1)
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
    out = model.functional_forward(params, x, tasks=True)
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


# cbfinn/maml's network: conv_padding tf_same, bn_scale false, bn_eps 0.001, head_init normal

def test_tf_same_padding_pads_the_odd_pixel_after_as_tensorflow_does():
    # TensorFlow's 'SAME' for a 3x3 kernel with stride 2: 28 -> 14 pads (0, 1), 14 -> 7 (0, 1), 7 -> 4 (1, 1),
    # 4 -> 2 (0, 1); with stride 1 one pixel each side, as torch's padding=1
    assert [conv4.same_padding(side, side, 2) for side in (28, 14, 7, 4)] == \
        [(0, 1, 0, 1), (0, 1, 0, 1), (1, 1, 1, 1), (0, 1, 0, 1)]
    assert conv4.same_padding(84, 42, 1) == (1, 1, 1, 1)
    torch.manual_seed(0)
    model = models.build(tiny_config(downsample="stride", image_size=28, conv_padding="tf_same")).double()
    symmetric = models.build(tiny_config(downsample="stride", image_size=28)).double()
    symmetric.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    first = model.blocks[0].conv
    out = first.forward(model.blocks[0].pad(x))
    torch.testing.assert_close(out, F.conv2d(F.pad(x, (0, 1, 0, 1)), first.weight, first.bias, stride=2),
                               rtol=0, atol=0)
    assert out.shape == (3, 4, 14, 14)
    # torch's padding=1 samples other pixels: the outputs differ
    assert not torch.allclose(symmetric.blocks[0].conv.forward(x), out)
    assert not torch.allclose(symmetric(x), model(x))


def test_without_bn_scale_batch_norm_has_a_shift_and_no_scale_parameter():
    torch.manual_seed(0)
    model = models.build(tiny_config(bn_scale=False, bn_eps=1e-3)).double()
    names = dict(model.named_parameters())
    assert not any(n.endswith("norm.weight") for n in names) and all(f"blocks.{i}.norm.bias" in names for i in range(4))
    assert model.parameter_roles()["blocks.0.norm.bias"] == "batch_norm"
    assert model.blocks[0].norm.eps == 1e-3 and model.blocks[0].norm.weight is None
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    h = model.blocks[0].conv.forward(x)
    shift = torch.randn(4, dtype=torch.float64)
    mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    with torch.no_grad():
        model.blocks[0].norm.bias.copy_(shift)
    torch.testing.assert_close(model.blocks[0].norm.forward(h),
                               (h - mean) / torch.sqrt(var + 1e-3) + shift.view(1, -1, 1, 1), rtol=1e-12, atol=1e-12)
    # the batched pass and MAML++'s per-step rows take a layer without a scale too
    params = {n: p + 0.1 * torch.randn(2, *p.shape, dtype=torch.float64) for n, p in names.items()}
    xs = torch.rand(2, 5, 1, 16, 16, dtype=torch.float64)
    for t in range(2):
        torch.testing.assert_close(model.functional_forward(params, xs, tasks=True)[t],
                                   model.functional_forward({n: p[t] for n, p in params.items()}, xs[t]),
                                   rtol=1e-12, atol=1e-12)
    per_step = models.build(tiny_config(bn_scale=False, per_step_bn=True, inner_steps=2, eval_inner_steps=2))
    # a row per inner step (MAML++'s authors' number_of_training_steps_per_iter rows)
    assert per_step.blocks[0].norm.weight is None and per_step.blocks[0].norm.bias.shape == (2, 4)
    assert per_step(torch.rand(4, 1, 16, 16), bn_step=1).shape == (4, 3)


def test_head_init_normal_draws_the_output_layer_from_a_standard_normal():
    torch.manual_seed(0)
    normal = models.build(tiny_config(downsample="stride", filters=64, ways=20, head_init="normal"))
    xavier = models.build(tiny_config(downsample="stride", filters=64, ways=20))
    assert 0.9 < normal.head.weight.std().item() < 1.1  # 1,280 draws of N(0, 1)
    bound = (6 / (64 + 20)) ** 0.5  # Glorot uniform's
    assert xavier.head.weight.abs().max().item() <= bound and normal.head.weight.abs().max().item() > 2
    assert torch.equal(normal.head.bias, torch.zeros(20))
    # the convolutions keep Glorot's uniform bound, TensorFlow's fan_in 9 * in and fan_out 9 * out
    conv = normal.blocks[1].conv.weight
    assert conv.abs().max().item() <= (6 / (9 * 64 + 9 * 64)) ** 0.5
