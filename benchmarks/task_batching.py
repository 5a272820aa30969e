"""Per-task loop vs all tasks in one batched pass (grouped convolutions), for the
MAML meta-step of each preset: median seconds per step, measured interleaved in one
process (loop, batched, loop, ...) so that machine noise hits both alike, and the
float64 meta-gradient difference between the two.

    python benchmarks/task_batching.py --data ../shared/data/omniglot-28 --steps 7 \
        --presets omniglot-5w1s omniglot-5w5s omniglot-20w1s omniglot-5w1s-pytorch
"""
import argparse
import statistics
import time

import torch

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset


def build(config, batch_tasks, dtype):
    torch.manual_seed(config["seed"])
    return algorithms.build({**config, "batch_tasks": batch_tasks}).to(dtype)


def gradient(algorithm, tasks):
    algorithm.zero_grad()
    algorithm.meta_gradient(tasks)
    return [p.grad.clone() for p in algorithm.parameters()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--presets", nargs="+", default=["omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s",
                                                         "omniglot-5w1s-pytorch"])
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | loop s/step | batched s/step | loop / batched | max abs grad diff (float64) |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.presets:
        config = apply_overrides(load_preset(name), {"data": args.data})
        dataset, refs = data.load(config, progress=False)
        sampler = data.sampler(config, dataset, refs, "train", config["seed"])
        tasks64 = data.sampler(config, dataset, refs, "train", config["seed"], dtype=torch.float64).batch(0, config["meta_batch"])
        diff = max((a - b).abs().max().item() for a, b in zip(gradient(build(config, False, torch.float64), tasks64),
                                                              gradient(build(config, True, torch.float64), tasks64)))
        loop, batched = build(config, False, torch.float32), build(config, True, torch.float32)
        times = {False: [], True: []}
        for index in range(args.steps + 1):
            tasks = sampler.batch(index, config["meta_batch"])
            for flag, algorithm in ((False, loop), (True, batched)):
                start = time.perf_counter()
                algorithm.zero_grad()
                algorithm.meta_gradient(tasks)
                if index:  # the first step of each warms up
                    times[flag].append(time.perf_counter() - start)
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"| `{name}` | {a:.3f} | {b:.3f} | {a / b:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
