"""Prototypical Networks' presets against the authors' code (jakesnell/prototypical-networks):
batch norm as their nn.BatchNorm2d in train() mode while training (batch statistics, the
running statistics updated with momentum 0.1) and in model.eval() at test (the running
statistics). The authors' network and loss are written out here with torch.nn layers."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot import algorithms
from fewshot.config import load_preset, preset_names

PROTONET_PRESETS = [name for name in preset_names() if name.startswith("protonet-")]


def authors_encoder(channels, filters):
    """protonets/models/few_shot.py, load_protonet_conv: 4 x [conv3x3 pad 1, BatchNorm2d, ReLU, max-pool 2], flatten."""
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(channels if i == 0 else filters, filters, 3, padding=1),
                                         nn.BatchNorm2d(filters), nn.ReLU(), nn.MaxPool2d(2)) for i in range(4)],
                         nn.Flatten())


def authors_log_p(encoder, xs, xq):
    """Their Protonet.loss up to log_p_y: one batch of support then query, class c = row c of xs."""
    ways, shots = xs.shape[:2]
    z = encoder(torch.cat([xs.flatten(0, 1), xq.flatten(0, 1)]))
    prototypes = z[:ways * shots].view(ways, shots, -1).mean(1)
    distances = ((z[ways * shots:, None, :] - prototypes[None]) ** 2).sum(2)
    return F.log_softmax(-distances, dim=1)


def copy_weights(ours, theirs):
    """Our conv4 blocks into their encoder: blocks.i.conv -> i.0, blocks.i.norm -> i.1 (and running statistics)."""
    with torch.no_grad():
        for block, layers in zip(ours.model.blocks, theirs):
            for mine, their in ((block.conv, layers[0]), (block.norm, layers[1])):
                for name, tensor in list(mine.named_parameters()) + list(mine.named_buffers()):
                    getattr(their, name).copy_(tensor)


@pytest.mark.parametrize("preset", PROTONET_PRESETS)
def test_protonet_presets_keep_running_statistics_as_the_authors_code(preset):
    config = load_preset(preset)
    assert config.batch_norm == "inductive"
    assert algorithms.build(config).model.batch_norm_mode == "inductive"


def test_protonet_trains_and_tests_with_batch_norm_as_the_authors_train_and_eval_modes():
    """Three training episodes of the preset (5-way here), then a test episode, on both networks
    from the same float64 weights: the same meta-gradient and running statistics after each
    episode, and at test the same query log-probabilities, each query's independent of the others."""
    torch.manual_seed(0)
    config = load_preset("protonet-omniglot-5w1s").replace(ways=5, filters=8)
    ours = algorithms.build(config).double()
    theirs = authors_encoder(config.channels, config.filters).double().train()
    copy_weights(ours, theirs)
    generator = torch.Generator().manual_seed(1)
    ways, shots, query = 5, config.shots, config.query
    for episode in range(3):
        xs = torch.rand(ways, shots, 1, 28, 28, generator=generator, dtype=torch.float64)
        xq = torch.rand(ways, query, 1, 28, 28, generator=generator, dtype=torch.float64)
        task = ours_task(xs, xq)
        ours.zero_grad()
        theirs.zero_grad()
        ours.meta_gradient([task], episode)
        targets = torch.arange(ways).repeat_interleave(query)
        F.nll_loss(authors_log_p(theirs, xs, xq), targets).backward()
        for block, layers in zip(ours.model.blocks, theirs):
            for mine, their in ((block.conv, layers[0]), (block.norm, layers[1])):
                torch.testing.assert_close(mine.weight.grad, their.weight.grad, rtol=1e-9, atol=1e-12)
                torch.testing.assert_close(mine.bias.grad, their.bias.grad, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(block.norm.running_mean, layers[1].running_mean, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(block.norm.running_var, layers[1].running_var, rtol=1e-12, atol=1e-14)
        with torch.no_grad():  # the same step on both, so the next episode starts elsewhere
            for parameter in ours.parameters():
                parameter -= 0.1 * parameter.grad
            copy_weights(ours, theirs)
    assert ours.model.blocks[0].norm.running_mean.abs().max() > 0  # training moved them
    theirs.eval()
    xs = torch.rand(ways, shots, 1, 28, 28, generator=generator, dtype=torch.float64)
    xq = torch.rand(ways, 15, 1, 28, 28, generator=generator, dtype=torch.float64)
    task = ours_task(xs, xq)
    with torch.no_grad():
        expected = authors_log_p(theirs, xs, xq)
        adapted = ours.adapt(task.support_x, task.support_y)
        together = F.log_softmax(ours.predict(adapted, task.query_x), 1)
        alone = torch.cat([F.log_softmax(ours.predict(adapted, x[None]), 1) for x in task.query_x])
    torch.testing.assert_close(together, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alone, expected, rtol=1e-9, atol=1e-12)


def ours_task(xs, xq):
    from fewshot.data.episodes import Task
    ways = len(xs)
    return Task(xs.flatten(0, 1), torch.arange(ways).repeat_interleave(xs.shape[1]),
                xq.flatten(0, 1), torch.arange(ways).repeat_interleave(xq.shape[1]))
