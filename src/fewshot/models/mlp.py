"""A fully connected ReLU network: the MAML paper's regression model (two hidden
layers of 40 units). Its last layer is the head (ANIL adapts it)."""
from typing import TYPE_CHECKING, Self

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from . import BACKBONES
from .base import Backbone, task_linear

if TYPE_CHECKING:
    from ..data.episodes import Task


@BACKBONES.register("mlp")
class MLP(Backbone):
    reads = frozenset({"in_features", "hidden", "out_features"})

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    @property
    def head(self) -> nn.Linear:
        """The last layer (a property, not a second name for it in the state dict)."""
        return self.layers[-1]

    @classmethod
    def from_config(cls, config: Config) -> Self:
        return cls(config.in_features, tuple(config.hidden), config.out_features or config.ways)

    def forward(self, x: torch.Tensor, bn_training: bool | None = None, bn_step: int = 0, trace: list | None = None,
                features_only: bool = False) -> torch.Tensor:
        """Options: see models/base.py (no batch norm here: bn_training and bn_step do nothing)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if features_only and i == last:
                break
            x = layer.forward(x)
            if i < last:
                x = F.relu(x)
            if trace is not None:
                self.trace_row(trace, f"layers.{i}  linear" + ("+ReLU" if i < last else ""), x, layer)
        return x

    can_batch_tasks = True

    def batching_pays_on_cpu(self, task: "Task", threads: int) -> bool:
        """A small MLP's step is all operator-call overhead: batching always pays
        (docs/benchmarks.md, "Making the meta-step faster: all tasks in one pass")."""
        return True

    def tasks_forward(self, x: torch.Tensor, bn_training: bool, bn_step: int,
                      features_only: bool = False) -> torch.Tensor:
        """Many tasks at once (`functional_forward(..., tasks=True)`): x is T x n x in. A second
        form of `forward`, kept because torch.func.vmap of `forward` takes more CPU time per
        meta-step for this small network (measured in docs/benchmarks.md): per task, one
        fused baddbmm per layer."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if features_only and i == last:
                break
            x = task_linear(x, layer.weight, layer.bias)
            if i < last:
                x = F.relu(x)
        return x
