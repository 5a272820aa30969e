"""ANIL's body run once per task against the whole network at every inner step.

    python benchmarks/anil_features_once.py --data ../shared/data/omniglot-28 \
        --presets lake-anil anil-omniglot-5w1s --steps 10 --threads 1

ANIL adapts the head alone, so its body's features are the same at every inner step;
fewshot computes them once per task (algorithms/anil.py). This times a meta-training
step (meta-gradient and Adam step) and a meta-test adaptation (`adapt`, the preset's
eval_inner_steps) both ways, the two alternating step by step on the same tasks so
that a busy machine slows both alike, and prints the medians and their ratio. The two
ways' meta-gradients are compared on the first step, the largest difference of an
entry over the largest entry (equal up to float rounding; tests/algorithms/test_family.py
checks them in float64).
"""
import argparse
import json
import platform
import statistics
import time

import torch

from fewshot import algorithms, data
from fewshot.algorithms.anil import ANIL
from fewshot.config import apply_overrides, load_preset
from fewshot.optim import make_optimizer


class EveryStep(ANIL):
    """ANIL as MAML runs it: the whole network at each inner step."""
    reuses_features = False


def timed(function, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare(name, data_spec, steps, warmup, device):
    config = apply_overrides(load_preset(name), {"data": data_spec})
    dataset, refs = data.load(config, progress=False)
    sampler = data.sampler(config, dataset, refs, "train", config.seed)
    ways = {}
    for label, kind in (("once", ANIL), ("every step", EveryStep)):
        torch.manual_seed(config.seed)
        built = algorithms.build(config)
        algorithm = kind(built.model, config, built.family).to(device)
        ways[label] = (algorithm, make_optimizer(algorithm, config)[0], {"step": [], "adapt": []})
    difference = None
    for index in range(warmup + steps):
        tasks = [t.to(device) for t in sampler.batch(index, config.meta_batch)]
        grads = {}
        for label, (algorithm, optimizer, times) in ways.items():
            def step():
                optimizer.zero_grad(set_to_none=True)
                algorithm.meta_gradient(tasks, index)
            seconds = timed(step, device)
            grads[label] = [p.grad.clone() for p in algorithm.parameters()]
            seconds += timed(optimizer.step, device)
            adapt_seconds = timed(lambda: algorithm.adapt(tasks[0].support_x, tasks[0].support_y), device)
            if index >= warmup:
                times["step"].append(seconds)
                times["adapt"].append(adapt_seconds)
        if index == 0:  # against the largest entry of all: a conv bias before batch norm has a gradient of ~0
            scale = max(float(b.abs().max()) for b in grads["every step"])
            difference = max(float((a - b).abs().max()) for a, b in zip(grads["once"], grads["every step"])) / scale
    row = {"preset": name, "steps": steps, "meta_batch": config.meta_batch, "inner_steps": config.inner_steps,
           "eval_inner_steps": config.eval_inner_steps, "largest_relative_gradient_difference": difference}
    for part in ("step", "adapt"):
        once, every = (statistics.median(ways[label][2][part]) for label in ("once", "every step"))
        row.update({f"{part}_once_s": once, f"{part}_every_step_s": every, f"{part}_speedup": every / once})
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--presets", nargs="+", default=["lake-anil", "anil-omniglot-5w1s"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [compare(name, args.data, args.steps, args.warmup, device) for name in args.presets]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), {device}")
    print("| preset | meta-step: once / every step (s) | speed-up | adapt: once / every step (s) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['preset']} | {r['step_once_s']:.3f} / {r['step_every_step_s']:.3f} | {r['step_speedup']:.2f}x "
              f"| {r['adapt_once_s']:.4f} / {r['adapt_every_step_s']:.4f} | {r['adapt_speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "device": str(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
