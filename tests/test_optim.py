"""Meta-optimizer schedules, and how they follow a resume that changes `steps`."""
import math

import pytest
import torch

from fewshot.config import DEFAULTS, Config
from fewshot.optim import LinearDecay, clip_gradients, make_optimizer, set_schedule_length


def schedule_of(steps, **overrides):
    config = Config(**{**DEFAULTS, "meta_lr": 0.1, "min_meta_lr": 0.01, "steps": steps, **overrides})
    return make_optimizer(torch.nn.Linear(2, 1), config)


def rates(optimizer, schedule, steps):
    seen = []
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


def restored(old_steps, done, new_steps, **overrides):
    """A schedule run `done` steps of `old_steps`, saved, restored into a fresh one and made `new_steps` long."""
    optimizer, schedule = schedule_of(old_steps, **overrides)
    rates(optimizer, schedule, done)
    saved = optimizer.state_dict(), schedule.state_dict()
    optimizer, schedule = schedule_of(old_steps, **overrides)
    optimizer.load_state_dict(saved[0])
    schedule.load_state_dict(saved[1])
    set_schedule_length(optimizer, schedule, new_steps, done)
    return optimizer, schedule


def test_linear_decay_falls_from_one_to_its_end_and_stays():
    decay = LinearDecay(4, 0.2)
    end = 1.0 + (0.2 - 1.0) * 4 / 4  # 0.2 as the float the formula gives
    assert [decay(s) for s in (0, 2, 4, 9)] == [1.0, 1.0 + (0.2 - 1.0) * 2 / 4, end, end]


def test_a_finished_cosine_schedule_extended_from_4_to_6_steps_follows_the_6_step_schedule():
    optimizer, schedule = restored(4, 4, 6, lr_schedule="cosine")
    # at the resumed step: the closed form of a 6-step cosine at step 4, not the 4-step floor
    closed = [0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * s / 6)) / 2 for s in (4, 5, 6)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(closed[0], rel=1e-12)
    extended = rates(optimizer, schedule, 2)
    fresh = rates(*schedule_of(6, lr_schedule="cosine"), 6)
    assert extended == pytest.approx(fresh[4:], rel=1e-12)
    assert extended == pytest.approx(closed[1:], rel=1e-12)
    assert extended[-1] == pytest.approx(0.01, rel=1e-12)


def test_a_stopped_linear_schedule_extended_equals_the_longer_schedule_exactly():
    optimizer, schedule = restored(4, 2, 6, lr_schedule="linear", meta_optimizer="sgd")
    # LambdaLR computes each rate afresh from the multiplier: the same floats as a 6-step run
    assert rates(optimizer, schedule, 4) == rates(*schedule_of(6, lr_schedule="linear", meta_optimizer="sgd"), 6)[2:]


def test_step_decay_does_not_depend_on_steps():
    optimizer, schedule = restored(4, 4, 6, lr_schedule="step", lr_decay_every=2, lr_decay_gamma=0.5)
    assert rates(optimizer, schedule, 2) == rates(*schedule_of(6, lr_decay_every=2, lr_decay_gamma=0.5), 6)[4:]


def test_a_shorter_length_ends_the_cosine_at_its_floor():
    optimizer, schedule = restored(10, 3, 5, lr_schedule="cosine")
    assert rates(optimizer, schedule, 2)[-1] == pytest.approx(0.01, rel=1e-12)


def test_clip_gradients_clips_entries_then_each_tensors_norm():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, -4.0]), torch.tensor([0.5])
    clip_gradients([a, b], value=2.0, norm=1.0)
    # entries clipped to [-2, 2] -> [2, -2], norm 2*sqrt(2) -> scaled to norm 1; b's norm 0.5 is kept
    assert a.grad.tolist() == pytest.approx([2 ** -0.5, -(2 ** -0.5)], rel=1e-6)
    assert b.grad.tolist() == [0.5]
