"""The conv4 backbone of the MAML paper and the few-shot literature.

Two standard forms:
  maxpool: 4 x [conv3x3 (pad 1), BN, ReLU, max-pool 2x2], flattened (Vinyals et al.;
           MAML on miniImageNet)
  stride:  4 x [conv3x3 stride 2 (pad 1), BN, ReLU], averaged over space (MAML's
           original Omniglot network, cbfinn/maml `forward_conv` without max-pool)
then a linear layer to `ways` outputs. `leaky_relu: true` puts a leaky ReLU
(slope 0.01) where the ReLU is, as MAML++'s authors' VGGReLUNormNetwork does.

cbfinn/maml's exact network takes four keys (its presets set them): `bn_scale: false`
and `bn_eps: 0.001` (tf.contrib.layers.batch_norm's defaults: a shift, no scale),
`conv_padding: tf_same` (TensorFlow's 'SAME': a stride-2 convolution of an even side
pads only the bottom and right, where torch's padding=1 pads both sides and samples
other pixels) and `head_init: normal` (its Omniglot output layer, tf.random_normal).
Its conv and miniImageNet output weights are Glorot uniform, as here by default:
xavier_initializer_conv2d of a [3, 3, in, out] kernel has fan_in 9 * in and fan_out
9 * out, as torch's xavier_uniform_ of [out, in, 3, 3].

`forward` is the one per-task forward; inner loops run it with explicit parameters
(`functional_forward`, torch.func.functional_call). `tasks_forward` (what
`functional_forward(..., tasks=True)` runs) takes many tasks side by side as grouped
convolutions: a second, hand-written form of the same layers, kept because it is
faster on the CPU than torch.func.vmap of `forward` (see its docstring); it reads the
strides, paddings and batch-norm rows from the same layers.
"""
from typing import TYPE_CHECKING, Literal, Self

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..errors import FewshotError
from . import BACKBONES
from .base import Backbone, BatchNorm, scale_or_ones, task_linear

if TYPE_CHECKING:
    from ..data.episodes import Task

# Where the batched pass pays on the CPU, as measured in docs/benchmarks.md ("Making the meta-step
# faster: all tasks in one pass", the timings per preset and thread count); on CUDA it always runs
# batched. One thread: tasks of at most this many images (support + query; the 5-way 1-shot presets).
CPU_BATCHING_MAX_IMAGES = 10
# Two or more threads: support sets of at most this many pixels (20 Omniglot images of 28 x 28; every
# Omniglot 1-shot preset). Larger ones, miniImageNet's 84 x 84 included, keep both threads busy per task.
CPU_BATCHING_MAX_SUPPORT_PIXELS = 20 * 28 * 28
# `leaky_relu: true`: torch's default slope, which MAML++'s authors' F.leaky_relu(out) uses
LEAKY_SLOPE = 0.01


def same_padding(height: int, width: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow's 'SAME' padding of a 3x3 convolution, as F.pad's (left, right, top,
    bottom): ceil(side / stride) outputs, the odd padded pixel after the image."""
    pads = []
    for side in (width, height):
        total = max((-(-side // stride) - 1) * stride + 3 - side, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Block(nn.Module):
    def __init__(self, in_channels: int, filters: int, stride: int, transductive: bool, bn_steps: int,
                 tf_same: bool = False, bn_scale: bool = True, bn_eps: float = 1e-5) -> None:
        super().__init__()
        # tf_same: padded by F.pad before the convolution (see same_padding)
        self.conv = nn.Conv2d(in_channels, filters, 3, stride=stride, padding=0 if tf_same else 1)
        self.norm = BatchNorm(filters, transductive, bn_steps, scale=bn_scale, eps=bn_eps)
        self.tf_same = tf_same

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x as the convolution takes it: padded here in the tf_same form, else by the convolution."""
        return F.pad(x, same_padding(x.shape[-2], x.shape[-1], self.conv.stride[0])) if self.tf_same else x


@BACKBONES.register("conv4")
class Conv4(Backbone):
    reads = frozenset({"filters", "downsample", "batch_norm", "head", "per_step_bn", "bn_scale", "bn_eps",
                       "conv_padding", "head_init", "leaky_relu"})

    def __init__(self, in_channels: int = 1, ways: int = 5, filters: int = 64,
                 downsample: Literal["maxpool", "stride"] = "maxpool", image_size: int = 28,
                 batch_norm: Literal["transductive", "inductive"] = "transductive", bn_steps: int = 1,
                 bn_scale: bool = True, bn_eps: float = 1e-5,
                 conv_padding: Literal["symmetric", "tf_same"] = "symmetric",
                 head_init: Literal["xavier", "normal"] = "xavier", leaky_relu: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.leaky = leaky_relu
        self.transductive = batch_norm == "transductive"
        self.queued_statistics = []  # inductive batch norm: see tasks_forward
        stride = 2 if downsample == "stride" else 1
        # bn_steps > 1: MAML++'s batch-norm weights and statistics per inner step
        self.blocks = nn.ModuleList(Block(in_channels if i == 0 else filters, filters, stride, self.transductive,
                                          bn_steps, conv_padding == "tf_same", bn_scale, bn_eps) for i in range(4))
        side = image_size
        for _ in range(4):
            side //= 2
        if downsample == "maxpool" and side < 1:
            raise FewshotError(f"image_size {image_size} is too small for four 2x2 max-pools; use 16 or more")
        features = filters if downsample == "stride" else filters * side * side
        self.features_size = features
        self.head = nn.Linear(features, ways) if ways else None  # no head: a feature extractor (ProtoNets)
        for module in self.modules():  # Glorot (see the module docstring), zero biases
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.head is not None and head_init == "normal":
            nn.init.normal_(self.head.weight)  # std 1: cbfinn/maml's tf.random_normal Omniglot head

    @classmethod
    def from_config(cls, config: Config) -> Self:
        # one row per inner step, as the authors' MetaBatchNormLayer (number_of_training_steps_per_iter
        # rows): step k's support pass and the query pass after its update share row k
        steps = max(config.inner_steps, config.eval_inner_steps, 1)
        return cls(in_channels=config.channels, ways=config.ways if config.head else 0,
                   filters=config.filters, downsample=config.downsample, image_size=config.image_size,
                   batch_norm=config.batch_norm, bn_steps=steps if config.per_step_bn else 1,
                   bn_scale=config.bn_scale, bn_eps=config.bn_eps, conv_padding=config.conv_padding,
                   head_init=config.head_init, leaky_relu=config.leaky_relu)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE) if self.leaky else F.relu(x)

    def forward(self, x: torch.Tensor, bn_training: bool | None = None, bn_step: int = 0, trace: list | None = None,
                features_only: bool = False) -> torch.Tensor:
        """Options: see models/base.py. Transductive batch norm: batch statistics always, no
        running statistics kept; inductive: running statistics updated while training, used at test."""
        bn_training = self.training if bn_training is None else bn_training
        for i, block in enumerate(self.blocks):
            x = block.conv.forward(block.pad(x))
            if trace is not None:
                self.trace_row(trace, f"blocks.{i}.conv  3x3/{block.conv.stride[0]}", x, block.conv)
            x = self.activate(block.norm.forward(x, bn_training, bn_step))
            if trace is not None:
                self.trace_row(trace, f"blocks.{i}.norm  BN+{'LeakyReLU' if self.leaky else 'ReLU'}", x, block.norm)
            if self.downsample == "maxpool":
                x = F.max_pool2d(x, 2)
                if trace is not None:
                    self.trace_row(trace, f"blocks.{i}.pool  maxpool 2x2", x)
        x = x.mean((2, 3)) if self.downsample == "stride" else x.flatten(1)
        if trace is not None:
            self.trace_row(trace, "features  " + ("spatial mean" if self.downsample == "stride" else "flatten"), x)
        return self.head_forward(x, trace, features_only)

    @property
    def can_batch_tasks(self) -> bool:
        """`tasks_forward` gives each task exactly its own forward, running statistics
        included (inductive batch norm), for a network with a head to adapt."""
        return self.head is not None

    def batching_pays_on_cpu(self, task: "Task", threads: int) -> bool:
        """The measured CPU rule: see CPU_BATCHING_MAX_IMAGES and CPU_BATCHING_MAX_SUPPORT_PIXELS."""
        if threads >= 2:
            support = task.support_x
            return support.shape[0] * support.shape[-2] * support.shape[-1] <= CPU_BATCHING_MAX_SUPPORT_PIXELS
        return task.images <= CPU_BATCHING_MAX_IMAGES

    def tasks_forward(self, x: torch.Tensor, bn_training: bool, bn_step: int,
                      features_only: bool = False) -> torch.Tensor:
        """Many tasks at once (`functional_forward(..., tasks=True)`): x is T x n x C x H x W. The
        tasks become the groups of grouped convolutions (side by side along channels), so
        batch-norm statistics stay per task. Why a second form of `forward`: torch.func.vmap
        of `forward` gives the same in more CPU time per meta-step (it splits batch norm's
        affine part into separate multiply and add kernels; measured in docs/benchmarks.md,
        "all tasks in one pass"). The layers (strides, paddings, per-step batch-norm
        rows, the head) are the module's own; only the task grouping is written here,
        and tests check it against vmap of `forward`.

        Inductive batch norm while training: each task's batch statistics are queued
        and `update_running_statistics()` applies them in the per-task loop's order
        (task after task, each task's forwards in turn), so the running statistics
        end as the loop leaves them."""
        tasks, n = x.shape[:2]
        record = bn_training and not self.transductive
        use_running = not self.transductive and not bn_training  # batch statistics, except at test (inductive)
        statistics = []
        h = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])
        for block in self.blocks:
            conv, norm = block.conv, block.norm
            weight, bias = conv.weight, conv.bias
            h = block.pad(h)
            if weight.dim() == 4 and bias.dim() == 1:
                # shared by the tasks (ANIL's body): one ordinary convolution over every task's images
                h = F.conv2d(h.reshape(n * tasks, -1, *h.shape[2:]), weight, bias, stride=conv.stride,
                             padding=conv.padding)
                h = h.reshape(n, -1, *h.shape[2:])
            else:
                weight = self.per_task(weight, tasks, 4)
                h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), self.per_task(bias, tasks, 1).reshape(-1),
                             stride=conv.stride, padding=conv.padding, groups=tasks)
            norm_dims = 2 if norm.steps > 1 else 1  # MAML++: steps x C
            norm_weight, norm_bias, mean, var = norm.step_tensors(
                bn_step, self.per_task(norm.weight, tasks, norm_dims) if norm.weight is not None else None,
                self.per_task(norm.bias, tasks, norm_dims))
            if record:
                with torch.no_grad():
                    statistics.append(torch.stack([h.mean((0, 2, 3)), h.var((0, 2, 3))]).view(2, tasks, -1)
                                      .transpose(0, 1))
            h = F.batch_norm(h, mean.repeat(tasks) if use_running else None, var.repeat(tasks) if use_running else None,
                             scale_or_ones(norm_weight.reshape(-1) if norm_weight is not None else None, h),
                             norm_bias.reshape(-1),
                             training=not use_running, eps=norm.eps)
            h = self.activate(h)
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        if record:
            self.queued_statistics.append((bn_step, statistics))  # per layer: T x 2 x C
        h = h.mean((2, 3)) if self.downsample == "stride" else h.reshape(n, tasks, -1, *h.shape[2:]).flatten(2)
        h = h.reshape(n, tasks, -1).transpose(0, 1)
        return h if features_only else task_linear(h, self.per_task(self.head.weight, tasks, 2), self.head.bias)

    @torch.no_grad()
    def update_running_statistics(self) -> None:
        """Apply the queued batch statistics of batched forwards as the per-task loop
        would have, one update per task and forward, in that order: with momentum m,
        n updates b_1..b_n of a running value r give (1-m)^n r + sum_i m (1-m)^(n-i) b_i."""
        queued, self.queued_statistics = self.queued_statistics, []
        if not queued:
            return
        for layer, block in enumerate(self.blocks):
            running = torch.stack([block.norm.running_mean, block.norm.running_var], -2)  # [steps x] 2 x C
            slots = running.unsqueeze(0) if running.dim() == 2 else running
            for slot in range(len(slots)):
                updates = [statistics[layer] for bn_step, statistics in queued
                           if min(bn_step, len(slots) - 1) == slot]
                if not updates:
                    continue
                # task-major order: task 0's forwards in turn, then task 1's, ...
                sequence = torch.stack(updates, 1).flatten(0, 1)
                m, n = block.norm.momentum, len(sequence)
                weights = m * (1 - m) ** torch.arange(n - 1, -1, -1, dtype=sequence.dtype, device=sequence.device)
                slots[slot] = (1 - m) ** n * slots[slot] + (weights[:, None, None] * sequence).sum(0)
            running = slots[0] if block.norm.running_mean.dim() == 1 else slots
            block.norm.running_mean.copy_(running[..., 0, :])
            block.norm.running_var.copy_(running[..., 1, :])

