"""The interface every algorithm implements.

An algorithm owns the meta-parameters (the backbone's, plus any it learns itself,
such as inner learning rates) and answers three questions:

  meta_gradient(tasks, step)  accumulate d(meta-objective)/d(meta-parameters) into .grad
                              (the trainer then sums it over processes and calls
                              finish_meta_gradient(result) before the optimizer step)
  adapt(support_x, support_y) task-specific state learned from the support set
  predict(adapted, x)         outputs for new inputs under that state

The trainer owns the optimizer; the evaluator calls adapt + predict only, so no
graph for second-order gradients is ever kept at evaluation.

The backbone (`self.model`, a models.base.Backbone) is run with explicit parameters,
`self.model.functional_forward(params, x, ...)` (torch.func.functional_call of its one
`forward`), and asked which parameters are batch norm's, the head's or the body's
(`self.parameter_roles`): no algorithm reads parameter names.
"""
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..config import Config, eval_inner_lr

if TYPE_CHECKING:
    from ..data.episodes import Task
    from ..tasks import Family


class Algorithm(nn.Module):
    def __init__(self, model: nn.Module, config: Config, family: "Family") -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.family = family
        # name -> "batch_norm" | "head" | "body", for the backbone's parameters
        self.parameter_roles = model.parameter_roles()

    any_number_of_classes = False  # True for algorithms with no fixed output layer
    # the config keys read_by the algorithm (config.Config) that this one reads: set away from
    # their defaults under an algorithm that does not list them, they are refused
    reads: frozenset[str] = frozenset()
    embeds_support_with_queries = False  # predict() puts the support set in the batch itself (ProtoNets)
    predicts_each_input_alone = False  # predict() gives an input's output whatever else is in its batch
    skips_nonfinite_steps = False  # a non-finite meta-batch is replaced, not fatal (LEO, as its reference)
    # state_dict prefixes that hold an optimizer's state rather than weights (Reptile's inner
    # Adam): a run started from another's weights (--init) starts them afresh
    optimizer_state_prefixes: tuple[str, ...] = ()

    def weights_only(self, state: dict) -> dict:
        """`state` without the entries of `optimizer_state_prefixes`."""
        return {k: v for k, v in state.items() if not k.startswith(self.optimizer_state_prefixes)}

    def meta_gradient(self, tasks: list["Task"], step: int = 0) -> dict[str, float | torch.Tensor]:
        """Add the gradient of the mean meta-loss over `tasks` to .grad; return
        {"loss": mean query loss, metric_name: mean query metric} after adaptation."""
        raise NotImplementedError

    def finish_meta_gradient(self, result: dict[str, float | torch.Tensor]) -> dict[str, float | torch.Tensor]:
        """Last changes to the whole meta-batch's gradient (all processes' shares summed);
        returns the result to log."""
        return result

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None) -> Any:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, adapted: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def schedule_period(self) -> int:
        """Meta-steps for which the learning-rate schedule (cosine) holds each value: 1, a
        new rate every step; MAML++ says an epoch, as its authors' code steps it."""
        return 1

    def describe_inner_lr(self) -> float | str:
        """The meta-test inner learning rate, for reports."""
        return eval_inner_lr(self.config)

    def describe_adaptation(self, steps: int, lr: float | None = None) -> str:
        """What adapting to a support set does at meta-test, in words (`fewshot eval`'s line)."""
        return inner_loop_words(steps, self.describe_inner_lr() if lr is None else lr)


def inner_loop_words(steps: int, lr: float | str) -> str:
    return f"{steps} inner step{'' if steps == 1 else 's'} at lr {lr}"
