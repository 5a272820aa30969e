"""MAML++ (Antoniou et al. 2019, "How to train your MAML"), as the authors' code
(AntreasAntoniou/HowToTrainYourMAMLPytorch, few_shot_learning_system.py and
inner_loop_optimizers.py; docs/faithfulness.md) runs it.

On top of MAML:
  LSLR   a learned inner learning rate per adapted parameter tensor and per inner
         step (a vector of inner_steps + 1 rates per tensor, as the authors'
         LSLRGradientDescentLearningRule; the last is used only by a meta-test with
         more steps); batch norm's weights are not adapted, so they have none;
  MSL    the meta-loss sums the query loss after every inner step, weighted; the
         weights start uniform and anneal toward the last step over `msl_epochs`;
  DA     derivative-order annealing: first order for `first_order_epochs`, then
         second order (the authors' `epoch > first_order_to_second_order_epoch`:
         first_order_epochs = that value + 1);
  BNWB/BNRS  batch-norm weights and running statistics per inner step
         (`per_step_bn`, held by the backbone), not adapted in the inner loop; inner
         step k's support pass and the query pass after its update both use row k;
  CA     cosine annealing of the meta learning rate (`lr_schedule: cosine`), one
         value per epoch.
An "epoch" is `steps_per_epoch` meta-steps (500 in the authors' configs), and the
epoch of meta-step s is s // steps_per_epoch: the authors' run_train_iter takes
int(iteration / total_iter_per_epoch), so MSL, DA and the cosine change at epoch
boundaries only.

MSL, DA and the per-step forward are MAML's hooks (loss_weights, second_order,
forward at step k), so the per-task loop and the batched pass both follow them.
"""
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..config import Config
from ..errors import FewshotError
from . import ALGORITHMS
from .maml import MAML

if TYPE_CHECKING:
    from ..tasks import Family


def rate_key(name: str) -> str:
    """The step-size vector's key for parameter `name` (ParameterDict keys hold no dots)."""
    return name.replace(".", "/")


@ALGORITHMS.register("mamlpp")
class MAMLPlusPlus(MAML):
    # the learned rates serve at meta-test too
    reads = MAML.reads - {"eval_inner_lr", "adapt_bn"} | {"msl_epochs", "first_order_epochs", "steps_per_epoch"}

    def __init__(self, model: nn.Module, config: Config, family: "Family") -> None:
        super().__init__(model, config, family)
        # inner_steps + 1 rates, as the authors' LSLR rule (total_num_inner_loop_steps + 1)
        self.step_sizes = nn.ParameterDict({
            rate_key(name): nn.Parameter(torch.full((config.inner_steps + 1,), float(config.inner_lr)))
            for name, _ in model.named_parameters() if self.adapts(name)})

    def adapts(self, name: str) -> bool:
        # batch-norm weights are per step and learned by the outer loop only, as in the
        # authors' configs (enable_inner_loop_optimizable_bn_params false): a per-step
        # weight adapted at step k would never be used again.
        return self.parameter_roles[name] != "batch_norm"

    def step_size(self, name: str, k: int, training: bool = True) -> torch.Tensor:
        rates = self.step_sizes[rate_key(name)]
        return rates[min(k, len(rates) - 1)]

    def forward_at(self, params: dict[str, torch.Tensor], x: torch.Tensor, k: int = 0, bn_training: bool = True,
                   tasks: bool = False) -> torch.Tensor:
        return self.model.functional_forward(params, x, bn_training, tasks=tasks, bn_step=k)

    def epoch(self, step: int) -> int:
        return step // self.config.steps_per_epoch

    def schedule_period(self) -> int:
        """The authors step their CosineAnnealingLR (T_max = total_epochs) once per epoch."""
        return self.config.steps_per_epoch

    def second_order(self, step: int) -> bool:
        return not self.config.first_order and self.epoch(step) >= self.config.first_order_epochs

    def loss_weights(self, step: int) -> list[float]:
        """Importance of the query loss after each inner step. Uniform at first; the
        non-final weights fall linearly to a floor of 0.03/K over `msl_epochs`
        while the final one grows, so the weights always sum to 1; afterwards only
        the final step counts (the authors' get_per_step_loss_importance_vector)."""
        steps = self.config.inner_steps
        epoch, span = self.epoch(step), self.config.msl_epochs
        if span <= 0 or epoch >= span:
            return [0.0] * (steps - 1) + [1.0]
        decay = epoch / steps / span
        floor = 0.03 / steps
        weights = [max(1.0 / steps - decay, floor) for _ in range(steps - 1)]
        return weights + [1.0 - sum(weights)]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> tuple[list[str], list[str]]:
        # checkpoints written before issue 19 hold one rate vector per layer ("step_sizes.head")
        # where there is now one per tensor ("step_sizes.head/weight"), and one more batch-norm row
        layers = {key.rsplit("/", 1)[0] for key in self.step_sizes}
        if any(key.startswith("step_sizes.") and key[len("step_sizes."):] in layers for key in state_dict):
            raise FewshotError("this MAML++ checkpoint has one learned step size per layer, from a fewshot "
                               "before per-tensor step sizes (LSLR) and per-step batch-norm rows as the "
                               "authors' code; train it again with this version")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def describe_inner_lr(self) -> str:
        return "learned per parameter tensor and step"
