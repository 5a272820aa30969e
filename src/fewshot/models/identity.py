"""No backbone (`model: none`): the inputs are features already, as for LEO on
precomputed embeddings."""
from typing import Self

import torch

from ..config import Config
from . import BACKBONES
from .base import Backbone


@BACKBONES.register("none")
class NoBackbone(Backbone):
    @classmethod
    def from_config(cls, config: Config) -> Self:
        return cls()

    def forward(self, x: torch.Tensor, bn_training: bool | None = None, bn_step: int = 0, trace: list | None = None,
                features_only: bool = False) -> torch.Tensor:
        if trace is not None:
            self.trace_row(trace, "identity (precomputed features)", x)
        return x
