"""Sinusoid regression (Finn et al. 2017, section 5.1): each task is a sine wave
y = A sin(x - phase) with A in [0.1, 5.0], phase in [0, pi], x uniform in [-5, 5].

torch is imported when tasks are built, not when the dataset kinds are named."""
import math

import numpy as np

from .kinds import DATASETS, DatasetKind

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
SPLIT_SEED = {"train": 0, "val": 1, "test": 2}  # added to the seed: each split its own stream of waves


class SinusoidSampler:
    """The same interface as EpisodeSampler: batch i is a function of (seed, i)."""

    def __init__(self, shots, query, seed, dtype=None):
        import torch
        self.shots, self.query, self.seed = shots, query, seed
        self.dtype = torch.float32 if dtype is None else dtype

    def wave(self, rng):
        return rng.uniform(*AMPLITUDE), rng.uniform(*PHASE)

    def task(self, rng):
        import torch

        from .episodes import Task
        amplitude, phase = self.wave(rng)
        x = rng.uniform(*X_RANGE, size=(self.shots + self.query, 1))
        y = amplitude * np.sin(x - phase)
        x, y = torch.from_numpy(x).to(self.dtype), torch.from_numpy(y).to(self.dtype)
        task = Task(x[:self.shots], y[:self.shots], x[self.shots:], y[self.shots:])
        task.amplitude, task.phase = amplitude, phase
        return task

    def batch(self, index, size, part=None):
        from .episodes import sample_batch
        return sample_batch(self, index, size, part)


def curve(amplitude, phase, x):
    return amplitude * np.sin(np.asarray(x) - phase)


def sampler(config, split, seed, query, dtype=None):
    return SinusoidSampler(config.shots, query, seed + SPLIT_SEED[split], dtype)


SINUSOID = DATASETS.register("sinusoid")(DatasetKind("sinusoid", sampler=sampler))
