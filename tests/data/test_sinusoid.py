"""Sinusoid tasks (Finn et al. 2017, section 5.1): the ranges, the curve, the sizes,
and that each task is a function of (seed, batch index)."""
import math

import numpy as np
import pytest
import torch

from fewshot import data
from fewshot.config import eval_query, load_preset
from fewshot.data.sinusoid import SinusoidSampler, curve


def tasks_of(sampler, batches=40, size=25):
    return [task for index in range(batches) for task in sampler.batch(index, size)]


def test_amplitude_phase_and_inputs_lie_in_the_papers_ranges_and_fill_them():
    tasks = tasks_of(SinusoidSampler(shots=10, query=10, seed=0, dtype=torch.float64))
    amplitudes = np.array([t.amplitude for t in tasks])
    phases = np.array([t.phase for t in tasks])
    x = torch.cat([torch.cat([t.support_x, t.query_x]) for t in tasks]).numpy()
    assert len(tasks) == 1000
    assert amplitudes.min() >= 0.1 and amplitudes.max() <= 5.0
    assert phases.min() >= 0.0 and phases.max() <= math.pi
    assert x.min() >= -5.0 and x.max() <= 5.0
    # uniform over the whole range, not a corner of it: 1000 draws reach near both ends
    assert amplitudes.min() < 0.2 and amplitudes.max() > 4.9
    assert phases.min() < 0.05 and phases.max() > math.pi - 0.05
    assert x.min() < -4.99 and x.max() > 4.99
    assert abs(amplitudes.mean() - 2.55) < 0.15 and abs(phases.mean() - math.pi / 2) < 0.1
    assert abs(x.mean()) < 0.1
    # every task draws its own wave
    assert len(set(amplitudes.tolist())) == len(tasks) and len(set(phases.tolist())) == len(tasks)


def test_targets_are_exactly_the_sine_of_the_inputs():
    for task in tasks_of(SinusoidSampler(5, 7, seed=3, dtype=torch.float64), batches=4, size=10):
        for x, y in ((task.support_x, task.support_y), (task.query_x, task.query_y)):
            expected = task.amplitude * np.sin(x.numpy() - task.phase)
            assert np.array_equal(y.numpy(), expected)  # float64 end to end: bit for bit
            assert np.array_equal(curve(task.amplitude, task.phase, x.numpy()), expected)
            assert np.abs(y.numpy()).max() <= task.amplitude
    # float32 tasks are the float64 ones, rounded once
    single = SinusoidSampler(5, 7, seed=3).batch(2, 10)
    double = SinusoidSampler(5, 7, seed=3, dtype=torch.float64).batch(2, 10)
    for s, d in zip(single, double):
        assert s.support_x.dtype == torch.float32 and s.support_y.dtype == torch.float32
        assert torch.equal(s.support_x, d.support_x.float()) and torch.equal(s.query_y, d.query_y.float())
        assert (s.amplitude, s.phase) == (d.amplitude, d.phase)


@pytest.mark.parametrize("shots,query", [(5, 5), (10, 10), (20, 100), (1, 3)])
def test_support_and_query_sizes(shots, query):
    for task in SinusoidSampler(shots, query, seed=1).batch(0, 3):
        assert task.support_x.shape == (shots, 1) and task.support_y.shape == (shots, 1)
        assert task.query_x.shape == (query, 1) and task.query_y.shape == (query, 1)
        assert task.images == shots + query
        # support and query are different draws of the same wave
        assert not torch.isin(task.query_x, task.support_x).any()


def test_a_batch_is_a_function_of_seed_and_index():
    first = SinusoidSampler(10, 10, seed=7).batch(5, 25)
    again = SinusoidSampler(10, 10, seed=7).batch(5, 25)
    for a, b in zip(first, again):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
        assert (a.amplitude, a.phase) == (b.amplitude, b.phase)
    # sampling other batches first (as a resumed run or a prefetcher might) changes nothing
    sampler = SinusoidSampler(10, 10, seed=7)
    for index in (0, 9, 3):
        sampler.batch(index, 25)
    assert [t.amplitude for t in sampler.batch(5, 25)] == [t.amplitude for t in first]
    waves = lambda seed, index: {(t.amplitude, t.phase) for t in SinusoidSampler(10, 10, seed).batch(index, 25)}
    assert not waves(7, 5) & waves(7, 6)  # another index: other waves
    assert not waves(7, 5) & waves(8, 5)  # another seed: other waves


def waves_of(config, split, seed, batches=4):
    sampler = data.sampler(config, None, None, split, seed=seed)
    return {(t.amplitude, t.phase) for i in range(batches) for t in sampler.batch(i, 25)}


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2, 2 ** 64])
def test_no_choice_of_seeds_trains_on_the_validation_or_test_waves(offset):
    """The split is the spawn key of each task's SeedSequence, not a number added to the seed: a run
    whose seed is eval_seed + 1 or + 2 (or any other) draws other waves than the evaluation's splits.
    (With the split added to the seed, seed = eval_seed + 2 trained on the test waves.)"""
    config = load_preset("sinusoid-10shot")
    evaluation = {split: waves_of(config, split, config.eval_seed) for split in ("val", "test")}
    train = waves_of(config, "train", config.eval_seed + offset)
    assert len(train) == 100 and not train & evaluation["val"] and not train & evaluation["test"]


def test_train_val_and_test_splits_draw_different_waves():
    config = load_preset("sinusoid-10shot")
    assert data.load(config) == (None, None)  # generated: no data to load
    samplers = {split: data.sampler(config, None, None, split, seed=0) for split in ("train", "val", "test")}
    waves = {split: {(t.amplitude, t.phase) for i in range(4) for t in s.batch(i, 25)}
             for split, s in samplers.items()}
    assert not waves["train"] & waves["val"] and not waves["train"] & waves["test"]
    assert not waves["val"] & waves["test"]
    # the preset's sizes: K = 10 support points, 10 query points at meta-train, 100 at evaluation
    task = samplers["train"].batch(0, 1)[0]
    assert task.support_x.shape == (10, 1) and task.query_x.shape == (10, 1)
    test = data.sampler(config, None, None, "test", seed=0, query=eval_query(config)).batch(0, 1)[0]
    assert test.support_x.shape == (10, 1) and test.query_x.shape == (100, 1)


@pytest.mark.parametrize("name,shots", [("sinusoid-5shot", 5), ("sinusoid-10shot", 10), ("sinusoid-20shot", 20)])
def test_presets_hold_the_papers_numbers(name, shots):
    config = load_preset(name)
    assert config.dataset == "sinusoid" and config.data is None
    assert config.shots == shots and config.model == "mlp" and list(config.hidden) == [40, 40]
    assert (config.inner_steps, config.inner_lr, config.meta_batch, config.meta_lr) == (1, 0.01, 25, 0.001)
    assert config.first_order is False and config.algorithm == "maml"
