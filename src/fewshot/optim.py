"""The meta-optimizer, its learning-rate schedule, and gradient clipping.

Schedules and `steps`. The cosine (MAML++) and linear (Reptile) schedules span the
run's `steps`. When `fewshot train --resume RUN --steps N` changes that length,
`set_schedule_length` recomputes the schedule over the new total: from the resumed
step on, the learning rate is the one a run of N steps has at that step (so a
finished cosine run extended from 4 to 6 steps jumps back up to cos at 4/6 of the way,
and goes down to `min_meta_lr` at step 6). The step-decay schedule (`lr_decay_every`)
and a constant rate do not depend on `steps`: an extended run continues them unchanged.

The cosine changes every step, except where the algorithm's `schedule_period()` says
otherwise: MAML++'s authors step their CosineAnnealingLR (T_max = total_epochs) once
per epoch with the integer epoch, so under MAML++ meta-step s has the rate of epoch
s // steps_per_epoch of a cosine over steps / steps_per_epoch epochs (`PeriodCosine`).
"""
import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from .algorithms.base import Algorithm
from .config import Config


def make_optimizer(algorithm: nn.Module,
                   config: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer, schedule) over `algorithm.parameters()` as `config` asks; the cosine
    holds each rate for `algorithm.schedule_period()` steps (any other module: 1)."""
    if config.meta_optimizer == "sgd":
        optimizer = torch.optim.SGD(algorithm.parameters(), lr=config.meta_lr)
    else:
        optimizer = torch.optim.Adam(algorithm.parameters(), lr=config.meta_lr)
    steps, floor = config.steps, config.min_meta_lr
    period = algorithm.schedule_period() if isinstance(algorithm, Algorithm) else 1
    if config.lr_schedule == "cosine" and period > 1:  # MAML++: one rate per epoch
        end = floor / config.meta_lr if config.meta_lr else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, PeriodCosine(steps, period, end))
    elif config.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=floor)
    elif config.lr_schedule == "linear":  # Reptile: the outer step size falls linearly to its final value
        end = floor / config.meta_lr if config.meta_lr else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, LinearDecay(steps, end))
    else:
        every = config.lr_decay_every
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=every if every > 0 else 1,
                                                   gamma=config.lr_decay_gamma if every > 0 else 1.0)
    return optimizer, schedule


class LinearDecay:
    """Multiplier falling linearly from 1 at step 0 to `end` at step `steps` (picklable)."""

    def __init__(self, steps: int, end: float) -> None:
        self.steps, self.end = steps, end

    def __call__(self, step: int) -> float:
        return 1.0 + (self.end - 1.0) * min(step, self.steps) / self.steps


class PeriodCosine:
    """Multiplier of a cosine from 1 to `end` over `steps` meta-steps that changes every
    `period` steps: at step s, with e = s // period and E = steps / period,
    end + (1 - end) * (1 + cos(pi * e / E)) / 2; the closed form of torch's
    CosineAnnealingLR(T_max=E, eta_min=end * lr) stepped with epoch=e, as MAML++'s
    authors step it (picklable, and its state rides in the schedule's state_dict)."""

    def __init__(self, steps: int, period: int, end: float) -> None:
        self.steps, self.period, self.end = steps, period, end

    def __call__(self, step: int) -> float:
        epochs = self.steps / self.period
        epoch = min(step // self.period, epochs)
        return self.end + (1.0 - self.end) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def set_schedule_length(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, steps: int,
                        step: int) -> None:
    """Make a restored schedule span `steps` in all, from `step` (see the module's docstring):
    the learning rates become those of a fresh `steps`-long schedule at `step`."""
    if isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR):
        schedule.T_max = steps
        floor = schedule.eta_min
        # closed form; the scheduler's own recurrence carries it on from here
        rates = [floor + (base - floor) * (1 + math.cos(math.pi * min(step, steps) / steps)) / 2
                 for base in schedule.base_lrs]
    elif isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
        for decay in schedule.lr_lambdas:
            if isinstance(decay, (LinearDecay, PeriodCosine)):
                decay.steps = steps
        rates = [base * decay(step) for base, decay in zip(schedule.base_lrs, schedule.lr_lambdas)]
    else:
        return  # step decay and constant rates do not depend on the run's length
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    schedule._last_lr = list(rates)


def clip_gradients(parameters: Iterable[torch.Tensor], value: float | None = None, norm: float | None = None) -> None:
    """Clip each gradient entry to [-value, value], then each gradient tensor's L2 norm
    to `norm`, as LEO's reference does (runner.py: tf.clip_by_value, then tf.clip_by_norm
    on every gradient separately). None leaves that step out."""
    grads = [p.grad for p in parameters if p.grad is not None]
    for grad in grads:
        if value is not None:
            grad.clamp_(-value, value)
        if norm is not None:
            grad.mul_(torch.clamp(norm / (grad.norm() + 1e-12), max=1.0))
