"""Residual backbones of the few-shot literature.

  resnet12:  4 stages of [3 x (conv3x3, BN, LeakyReLU 0.1) with a 1x1-conv
             shortcut, max-pool 2x2], widths 64-160-320-640 (Oreshkin et al. 2018,
             TADAM; Lee et al. 2019, MetaOptNet; without DropBlock), then a global
             average pool: 640 features at any image size of 16 pixels or more.
  wrn28_10:  Wide ResNet 28-10 (Zagoruyko & Komodakis 2016): a 3x3 stem of 16 filters,
             three groups of four pre-activation basic blocks, widths 160-320-640,
             strides 1-2-2, then BN, ReLU and a global average pool: 640 features.
             The backbone of LEO's published embeddings (Rusu et al. 2019), here for
             users with a GPU (36.5M parameters).

`widths` (config key; None: the sizes above) scales either network down. Batch
norm follows `batch_norm` as in conv4: transductive (batch statistics always) or
inductive (running statistics at test). Conv layers have no bias (batch norm
follows each), and weights are He-initialized, as both papers' code does.
`forward` is the one forward (options: models/base.py); no batched form: tasks run
one at a time.
"""
from typing import Literal, Self

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..errors import FewshotError
from . import BACKBONES
from .base import Backbone, BatchNorm


class _ResidualBackbone(Backbone):
    """The parts both networks share: head, config, initialization, forward."""
    reads = frozenset({"widths", "batch_norm", "head"})

    def _finish(self, ways, features_size):
        """Head and initialization, once the body is built."""
        self.features_size = features_size
        self.head = nn.Linear(features_size, ways) if ways else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, config: Config) -> Self:
        if config.image_size < 16:
            raise FewshotError(f"{config.model} needs images of 16 pixels or more; got image_size "
                               f"{config.image_size}")
        widths = config.widths or cls.WIDTHS
        if len(widths) != len(cls.WIDTHS):
            raise FewshotError(f"{config.model} takes {len(cls.WIDTHS)} widths (widths: "
                               f"{list(cls.WIDTHS)}); got {list(widths)}")
        return cls(in_channels=config.channels, ways=config.ways if config.head else 0,
                   widths=tuple(widths), batch_norm=config.batch_norm)

    def forward(self, x: torch.Tensor, bn_training: bool | None = None, bn_step: int = 0, trace: list | None = None,
                features_only: bool = False) -> torch.Tensor:
        """Options: see models/base.py (one set of batch-norm weights: bn_step does nothing)."""
        x = self.body(x, self.training if bn_training is None else bn_training, trace)
        return self.head_forward(x, trace, features_only)


@BACKBONES.register("resnet12")
class ResNet12(_ResidualBackbone):
    WIDTHS = (64, 160, 320, 640)

    def __init__(self, in_channels: int = 3, ways: int = 5, widths: tuple[int, ...] = WIDTHS,
                 batch_norm: Literal["transductive", "inductive"] = "transductive") -> None:
        super().__init__()
        self.transductive = batch_norm == "transductive"
        self.stages = nn.ModuleList()
        for i, width in enumerate(widths):
            stage = nn.Module()
            channels = in_channels if i == 0 else widths[i - 1]
            stage.convs = nn.ModuleList(nn.Conv2d(channels if j == 0 else width, width, 3, padding=1, bias=False)
                                        for j in range(3))
            stage.norms = nn.ModuleList(BatchNorm(width, self.transductive) for _ in range(3))
            stage.shortcut = nn.Conv2d(channels, width, 1, bias=False)
            stage.shortcut_norm = BatchNorm(width, self.transductive)
            self.stages.append(stage)
        self._finish(ways, widths[-1])

    def body(self, x: torch.Tensor, bn_training: bool, trace: list | None) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            shortcut = stage.shortcut_norm.forward(stage.shortcut.forward(x), bn_training)
            h = x
            for j, (conv, norm) in enumerate(zip(stage.convs, stage.norms)):
                h = norm.forward(conv.forward(h), bn_training)
                if j < 2:
                    h = F.leaky_relu(h, 0.1)
            x = F.max_pool2d(F.leaky_relu(h + shortcut, 0.1), 2)
            if trace is not None:
                self.trace_row(trace, f"stages.{i}  3 x conv3x3-BN-LeakyReLU + shortcut, maxpool", x, stage)
        x = x.mean((2, 3))
        if trace is not None:
            self.trace_row(trace, "features  global average pool", x)
        return x


@BACKBONES.register("wrn28_10")
class WideResNet(_ResidualBackbone):
    WIDTHS = (16, 160, 320, 640)  # stem, then the three groups (16 x 10k for k = 1, 2, 4)
    BLOCKS = 4                    # per group: (depth 28 - 4) / 6

    def __init__(self, in_channels: int = 3, ways: int = 5, widths: tuple[int, ...] = WIDTHS,
                 batch_norm: Literal["transductive", "inductive"] = "transductive") -> None:
        super().__init__()
        self.transductive = transductive = batch_norm == "transductive"
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        for group, width in enumerate(widths[1:]):
            for b in range(self.BLOCKS):
                channels = widths[group] if b == 0 else width
                stride = (1 if group == 0 else 2) if b == 0 else 1
                block = nn.Module()
                block.norm1 = BatchNorm(channels, transductive)
                block.conv1 = nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False)
                block.norm2 = BatchNorm(width, transductive)
                block.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
                # a 1x1 projection where the width changes, else the identity
                block.shortcut = nn.Conv2d(channels, width, 1, stride=stride, bias=False) if channels != width else None
                self.blocks.append(block)
        self.norm = BatchNorm(widths[-1], transductive)
        self._finish(ways, widths[-1])

    def body(self, x: torch.Tensor, bn_training: bool, trace: list | None) -> torch.Tensor:
        x = self.stem.forward(x)
        if trace is not None:
            self.trace_row(trace, "stem  conv3x3", x, self.stem)
        for i, block in enumerate(self.blocks):
            h = F.relu(block.norm1.forward(x, bn_training))
            shortcut = block.shortcut.forward(h) if block.shortcut is not None else x
            h = F.relu(block.norm2.forward(block.conv1.forward(h), bn_training))
            x = shortcut + block.conv2.forward(h)
            if trace is not None:
                self.trace_row(trace, f"blocks.{i}  BN-ReLU-conv3x3 x 2 + shortcut", x, block)
        x = F.relu(self.norm.forward(x, bn_training)).mean((2, 3))
        if trace is not None:
            self.trace_row(trace, "features  BN-ReLU, global average pool", x, self.norm)
        return x
