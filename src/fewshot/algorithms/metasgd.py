"""Meta-SGD (Li et al. 2017): MAML with a learned step size for every parameter
entry, alpha, meta-learned with the initialization (theta' = theta - alpha * grad).
alpha starts at `inner_lr` and is used as learned at meta-test too."""
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..config import Config
from . import ALGORITHMS
from .maml import MAML

if TYPE_CHECKING:
    from ..tasks import Family


@ALGORITHMS.register("metasgd")
class MetaSGD(MAML):
    reads = MAML.reads - {"eval_inner_lr"}  # the learned rates serve at meta-test too

    def __init__(self, model: nn.Module, config: Config, family: "Family") -> None:
        super().__init__(model, config, family)
        # ParameterDict keys may not contain dots
        self.step_sizes = nn.ParameterDict({
            name.replace(".", "/"): nn.Parameter(torch.full_like(p, config.inner_lr))
            for name, p in model.named_parameters()})

    def step_size(self, name: str, k: int, training: bool = True) -> torch.Tensor:
        return self.step_sizes[name.replace(".", "/")]

    def describe_inner_lr(self) -> str:
        return "learned per parameter"
