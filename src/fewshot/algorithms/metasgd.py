"""Meta-SGD (Li et al. 2017): MAML with a learned step size for every parameter
entry, alpha, meta-learned with the initialization (theta' = theta - alpha * grad).
alpha starts at `inner_lr` and is used as learned at meta-test too."""
import torch
import torch.nn as nn

from . import ALGORITHMS
from .maml import MAML


@ALGORITHMS.register("metasgd")
class MetaSGD(MAML):
    reads = MAML.reads - {"eval_inner_lr"}  # the learned rates serve at meta-test too

    def __init__(self, model, config, family):
        super().__init__(model, config, family)
        # ParameterDict keys may not contain dots
        self.step_sizes = nn.ParameterDict({
            name.replace(".", "/"): nn.Parameter(torch.full_like(p, config.inner_lr))
            for name, p in model.named_parameters()})

    def step_size(self, name, k, training=True):
        return self.step_sizes[name.replace(".", "/")]

    def describe_inner_lr(self):
        return "learned per parameter"
