"""MAML++ (Antoniou et al. 2019, "How to train your MAML").

On top of MAML:
  LSLR   a learned inner learning rate per layer and per inner step;
  MSL    the meta-loss sums the query loss after every inner step, weighted; the
         weights start uniform and anneal toward the last step over `msl_epochs`;
  DA     derivative-order annealing: first order for `first_order_epochs`, then
         second order;
  BNWB/BNRS  batch-norm weights and running statistics per inner step
         (`per_step_bn`, held by the backbone), not adapted in the inner loop;
  CA     cosine annealing of the meta learning rate (`lr_schedule: cosine`).
An "epoch" is `steps_per_epoch` meta-steps (500 in the authors' configs).

MSL, DA and the per-step forward are MAML's hooks (loss_weights, second_order,
forward at step k), so the per-task loop and the batched pass both follow them.
"""
import torch
import torch.nn as nn

from . import ALGORITHMS
from .maml import MAML


def layer_of(name):
    return name.rsplit(".", 1)[0]


@ALGORITHMS.register("mamlpp")
class MAMLPlusPlus(MAML):
    # the learned rates serve at meta-test too
    reads = MAML.reads - {"eval_inner_lr"} | {"msl_epochs", "first_order_epochs", "steps_per_epoch"}

    def __init__(self, model, config, family):
        super().__init__(model, config, family)
        steps = max(config.inner_steps, config.eval_inner_steps)
        layers = sorted({layer_of(n) for n, _ in model.named_parameters() if self.adapts(n)})
        self.step_sizes = nn.ParameterDict({
            layer.replace(".", "/"): nn.Parameter(torch.full((steps,), float(config.inner_lr)))
            for layer in layers})

    def adapts(self, name):
        # batch-norm weights are per step and learned by the outer loop only, as in the
        # authors' configs (enable_inner_loop_optimizable_bn_params false): a per-step
        # weight adapted at step k would never be used again.
        return self.parameter_roles[name] != "batch_norm"

    def step_size(self, name, k, training=True):
        rates = self.step_sizes[layer_of(name).replace(".", "/")]
        return rates[min(k, len(rates) - 1)]

    def forward_at(self, params, x, k=0, bn_training=True, tasks=False):
        return self.model.functional_forward(params, x, bn_training, tasks=tasks, bn_step=k)

    def epoch(self, step):
        return step / self.config.steps_per_epoch

    def second_order(self, step):
        return not self.config.first_order and self.epoch(step) >= self.config.first_order_epochs

    def loss_weights(self, step):
        """Importance of the query loss after each inner step. Uniform at first; the
        non-final weights fall linearly to a floor of 0.03/K over `msl_epochs`
        while the final one grows, so the weights always sum to 1; afterwards only
        the final step counts."""
        steps = self.config.inner_steps
        epoch, span = self.epoch(step), self.config.msl_epochs
        if span <= 0 or epoch >= span:
            return [0.0] * (steps - 1) + [1.0]
        decay = epoch / steps / span
        floor = 0.03 / steps
        weights = [max(1.0 / steps - decay, floor) for _ in range(steps - 1)]
        return weights + [1.0 - sum(weights)]

    def describe_inner_lr(self):
        return "learned per layer and step"
