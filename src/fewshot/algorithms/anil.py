"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner
loop adapts the head only; the body is learned by the outer loop alone.

The body's output is then the same at every inner step, so it is computed once per
task (`inner_inputs`) and the inner steps run the head alone on it (`inner_forward`):
the meta-objective and its gradient are MAML's with the head adapted, without the
body's forward (and, second order, its backward) repeated at every step. Not with
inductive batch norm: each of MAML's support forwards updates the running
statistics, and the run keeps that count.
"""
import torch

from . import ALGORITHMS
from .maml import MAML


@ALGORITHMS.register("anil")
class ANIL(MAML):
    reads = MAML.reads - {"adapt_bn"}  # batch norm is never adapted: it is not the head

    def adapts(self, name: str) -> bool:
        return self.parameter_roles[name] == "head"

    @property
    def reuses_features(self) -> bool:
        """Whether the body's features are computed once per task (not with inductive batch norm)."""
        return self.model.batch_norm_mode != "inductive"

    def inner_inputs(self, params: dict[str, torch.Tensor], x: torch.Tensor, bn_training: bool = True,
                     tasks: bool = False) -> torch.Tensor:
        if not self.reuses_features:
            return x
        return self.model.functional_forward(params, x, bn_training, tasks=tasks, features_only=True)

    def inner_forward(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, k: int = 0,
                      bn_training: bool = True, tasks: bool = False) -> torch.Tensor:
        if not self.reuses_features:
            return super().inner_forward(params, inputs, k, bn_training, tasks)
        return self.model.functional_head(params, inputs, tasks)
