"""Residual backbones of the few-shot literature, with a functional forward.

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
"""
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FewshotError
from . import register


def _batch_norm(model, params, name, x, bn_training):
    norm = model.get_submodule(name)
    stats = (None, None) if model.transductive else (norm.running_mean, norm.running_var)
    return F.batch_norm(x, *stats, params[name + ".weight"], params[name + ".bias"],
                        training=bn_training or model.transductive, momentum=0.1)


class _Backbone(nn.Module):
    """The parts both networks share: head, config, initialization, forward."""

    def _finish(self, ways, batch_norm, features_size):
        """Head, batch-norm mode and initialization, once the body is built."""
        self.transductive = batch_norm == "transductive"
        self.features_size = features_size
        self.head = nn.Linear(features_size, ways) if ways else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, config):
        if config["image_size"] < 16:
            raise FewshotError(f"{config['model']} needs images of 16 pixels or more; got image_size "
                               f"{config['image_size']}")
        widths = config["widths"] or cls.WIDTHS
        if len(widths) != len(cls.WIDTHS):
            raise FewshotError(f"{config['model']} takes {len(cls.WIDTHS)} widths (widths: "
                               f"{list(cls.WIDTHS)}); got {list(widths)}")
        return cls(in_channels=config["channels"], ways=config["ways"] if config["head"] else 0,
                   widths=tuple(widths), batch_norm=config["batch_norm"])

    def functional_forward(self, params, x, bn_training=True, trace=None, bn_step=0):
        x = self.features(params, x, bn_training, trace)
        if self.head is None:
            return x
        x = F.linear(x, params["head.weight"], params["head.bias"])
        if trace is not None:
            trace.append(("head  linear", tuple(x.shape), self.head.weight.numel() + self.head.bias.numel()))
        return x

    def forward(self, x):
        return self.functional_forward(dict(self.named_parameters()), x, self.training)

    def _note(self, trace, label, x, *names):
        if trace is not None:
            count = sum(p.numel() for n in names for p in self.get_submodule(n).parameters())
            trace.append((label, tuple(x.shape), count))


@register("resnet12")
class ResNet12(_Backbone):
    WIDTHS = (64, 160, 320, 640)

    def __init__(self, in_channels=3, ways=5, widths=WIDTHS, batch_norm="transductive"):
        super().__init__()
        self.stages = nn.ModuleList()
        for i, width in enumerate(widths):
            stage = nn.Module()
            channels = in_channels if i == 0 else widths[i - 1]
            stage.convs = nn.ModuleList(nn.Conv2d(channels if j == 0 else width, width, 3, padding=1, bias=False)
                                        for j in range(3))
            stage.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(3))
            stage.shortcut = nn.Conv2d(channels, width, 1, bias=False)
            stage.shortcut_norm = nn.BatchNorm2d(width)
            self.stages.append(stage)
        self._finish(ways, batch_norm, widths[-1])

    def features(self, params, x, bn_training=True, trace=None, bn_step=0):
        for i in range(len(self.stages)):
            p = f"stages.{i}."
            shortcut = F.conv2d(x, params[p + "shortcut.weight"])
            shortcut = _batch_norm(self, params, p + "shortcut_norm", shortcut, bn_training)
            h = x
            for j in range(3):
                h = F.conv2d(h, params[p + f"convs.{j}.weight"], padding=1)
                h = _batch_norm(self, params, p + f"norms.{j}", h, bn_training)
                if j < 2:
                    h = F.leaky_relu(h, 0.1)
            x = F.max_pool2d(F.leaky_relu(h + shortcut, 0.1), 2)
            self._note(trace, p[:-1] + "  3 x conv3x3-BN-LeakyReLU + shortcut, maxpool", x, p[:-1])
        x = x.mean((2, 3))
        self._note(trace, "features  global average pool", x)
        return x


@register("wrn28_10")
class WideResNet(_Backbone):
    WIDTHS = (16, 160, 320, 640)  # stem, then the three groups (16 x 10k for k = 1, 2, 4)
    BLOCKS = 4                    # per group: (depth 28 - 4) / 6

    def __init__(self, in_channels=3, ways=5, widths=WIDTHS, batch_norm="transductive"):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        self.strides = []
        for group, width in enumerate(widths[1:]):
            for b in range(self.BLOCKS):
                channels = widths[group] if b == 0 else width
                block = nn.Module()
                block.norm1, block.conv1 = nn.BatchNorm2d(channels), nn.Conv2d(channels, width, 3, padding=1,
                                                                                bias=False)
                block.norm2, block.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, padding=1, bias=False)
                if channels != width:
                    block.shortcut = nn.Conv2d(channels, width, 1, bias=False)
                self.blocks.append(block)
                self.strides.append((1 if group == 0 else 2) if b == 0 else 1)
        self.norm = nn.BatchNorm2d(widths[-1])
        self._finish(ways, batch_norm, widths[-1])

    def features(self, params, x, bn_training=True, trace=None, bn_step=0):
        x = F.conv2d(x, params["stem.weight"], padding=1)
        self._note(trace, "stem  conv3x3", x, "stem")
        for i, (block, stride) in enumerate(zip(self.blocks, self.strides)):
            p = f"blocks.{i}."
            h = F.relu(_batch_norm(self, params, p + "norm1", x, bn_training))
            shortcut = F.conv2d(h, params[p + "shortcut.weight"], stride=stride) if hasattr(block, "shortcut") else x
            h = F.conv2d(h, params[p + "conv1.weight"], stride=stride, padding=1)
            h = F.relu(_batch_norm(self, params, p + "norm2", h, bn_training))
            x = shortcut + F.conv2d(h, params[p + "conv2.weight"], padding=1)
            self._note(trace, p[:-1] + "  BN-ReLU-conv3x3 x 2 + shortcut", x, p[:-1])
        x = F.relu(_batch_norm(self, params, "norm", x, bn_training)).mean((2, 3))
        self._note(trace, "features  BN-ReLU, global average pool", x, "norm")
        return x
