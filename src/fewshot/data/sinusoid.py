"""Sinusoid regression (Finn et al. 2017, section 5.1): each task is a sine wave
y = A sin(x - phase) with A in [0.1, 5.0], phase in [0, pi], x uniform in [-5, 5].

torch is imported when tasks are built, not when the dataset kinds are named."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .kinds import DATASETS, DatasetKind

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch

    from ..config import Config
    from .episodes import Task

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
# A split's index is the spawn key of every task's numpy SeedSequence: it is the last word of the
# seed material, so no choice of seeds gives two splits the same waves (adding it to the seed, as
# before, made a run with seed = eval_seed + 2 train on the test waves).
SPLITS = ("train", "val", "test")


class SinusoidSampler:
    """The same interface as EpisodeSampler: batch i is a function of (split, seed, i)."""

    def __init__(self, shots: int, query: int, seed: int, dtype: torch.dtype | None = None,
                 split: str = "train") -> None:
        import torch
        self.shots, self.query, self.seed = shots, query, seed
        self.split = SPLITS.index(split)
        self.dtype = torch.float32 if dtype is None else dtype

    def wave(self, rng: np.random.Generator) -> tuple[float, float]:
        return rng.uniform(*AMPLITUDE), rng.uniform(*PHASE)

    def task(self, rng: np.random.Generator) -> Task:
        import torch

        from .episodes import Task
        amplitude, phase = self.wave(rng)
        x = rng.uniform(*X_RANGE, size=(self.shots + self.query, 1))
        y = amplitude * np.sin(x - phase)
        x, y = torch.from_numpy(x).to(self.dtype), torch.from_numpy(y).to(self.dtype)
        task = Task(x[:self.shots], y[:self.shots], x[self.shots:], y[self.shots:])
        task.amplitude, task.phase = amplitude, phase
        return task

    def batch(self, index: int, size: int, part: Sequence[int] | None = None) -> list[Task]:
        """Tasks `part` (default: all) of batch `index`. Task j has its own generator, seeded by
        (seed, index, j) with the split as spawn key, so a process that samples only its share
        of the batch gets the very tasks a single process would."""
        tasks = []
        for j in range(size) if part is None else part:
            sequence = np.random.SeedSequence([self.seed, index, j], spawn_key=(self.split,))
            task = self.task(np.random.default_rng(sequence))
            task.seed = (self.seed, index, j)
            tasks.append(task)
        return tasks


def curve(amplitude: float, phase: float, x: npt.ArrayLike) -> np.ndarray:
    return amplitude * np.sin(np.asarray(x) - phase)


def sampler(config: Config, split: str, seed: int, query: int, dtype: torch.dtype | None = None) -> SinusoidSampler:
    return SinusoidSampler(config.shots, query, seed, dtype, split)


SINUSOID = DATASETS.register("sinusoid")(DatasetKind("sinusoid", sampler=sampler))
