"""Evaluation on a fixed, seeded set of tasks: two evaluations of one checkpoint
print identical numbers."""
import math

import numpy as np
from tqdm import tqdm

from . import algorithms, checkpoint, data
from .config import eval_inner_lr, eval_query
from .errors import FewshotError


def confidence(values):
    """Mean and 95% half-width, 1.96 * std / sqrt(n), as the few-shot literature reports."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


def evaluate(algorithm, sampler, n_tasks, steps=None, lr=None, device="cpu", progress=False, desc="eval"):
    """Adapt on each task's support set and score its query set; task i is the same
    for every call with the same sampler seed."""
    was_training = algorithm.training
    algorithm.eval()
    scores = []
    for index in tqdm(range(n_tasks), desc=desc, unit="task", disable=not progress, leave=False):
        task = sampler.batch(index, 1)[0].to(device)
        adapted = algorithm.adapt(task.support_x, task.support_y, steps, lr)
        scores.append(algorithm.family.metric(algorithm.predict(adapted, task.query_x), task.query_y))
    algorithm.train(was_training)
    mean, ci95 = confidence(scores)
    return {"mean": mean, "ci95": ci95, "tasks": n_tasks, "scores": scores}


def load_algorithm(state, device="cpu"):
    algorithm = algorithms.build(state["config"])
    algorithm.load_state_dict(state["algorithm"])
    return algorithm.to(device)


def evaluate_checkpoint(target, tasks=None, split="test", steps=None, lr=None, data_spec=None,
                        seed=None, device="cpu", progress=True):
    """Everything `fewshot eval` does, as a dict."""
    state = checkpoint.load(target)
    config = dict(state["config"])
    if data_spec is not None:
        config["data"] = str(data_spec)
    if split not in ("train", "val", "test"):
        raise FewshotError(f"unknown split {split!r}; choose train, val or test")
    dataset, refs = data.load(config, progress)
    sampler = data.sampler(config, dataset, refs, split, config["eval_seed"] if seed is None else seed,
                           query=eval_query(config))
    algorithm = load_algorithm(state, device)
    steps = config["eval_inner_steps"] if steps is None else steps
    lr = eval_inner_lr(config) if lr is None else lr
    n_tasks = config["eval_tasks"] if tasks is None else tasks
    if n_tasks < 1:
        raise FewshotError(f"--tasks must be at least 1, got {n_tasks}")
    result = evaluate(algorithm, sampler, n_tasks, steps, lr, device, progress, desc=f"eval {split}")
    result.update({
        "checkpoint": str(checkpoint.find(target)), "step": state["step"], "split": split,
        "preset": config.get("preset"), "ways": config["ways"], "shots": config["shots"],
        "query": eval_query(config), "inner_steps": steps, "inner_lr": lr,
        "metric": algorithm.family.metric_name,
        "seed": config["eval_seed"] if seed is None else seed,
    })
    return result


def describe(result):
    pct = 100 if result["metric"] == "accuracy" else 1
    unit = "%" if pct == 100 else ""
    return (f"{result['preset']} step {result['step']}, {result['split']} split: {result['metric']} "
            f"{pct * result['mean']:.2f}{unit} +- {pct * result['ci95']:.2f}{unit} (95% CI, "
            f"{result['tasks']} tasks, {result['ways']}-way {result['shots']}-shot, {result['query']} "
            f"queries per class, {result['inner_steps']} inner steps at lr {result['inner_lr']})")


__all__ = ["confidence", "evaluate", "evaluate_checkpoint", "describe", "load_algorithm"]
