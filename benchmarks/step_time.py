"""Median seconds per meta-training step of each preset, on this machine.

    python benchmarks/step_time.py --data ../shared/data/omniglot-28 \
        --presets omniglot-5w1s omniglot-5w5s omniglot-20w1s omniglot-20w5s omniglot-5w1s-pytorch

Each preset runs `--warmup` steps, then `--steps` timed meta-steps (sampling
excluded: the trainer prefetches it on another thread, or builds it on the GPU).
`--device cuda` times on a GPU (a synchronisation closes each timed step);
`--threads N` sets torch's threads. Prints a Markdown table and writes JSON to --json.
"""
import argparse
import json
import platform
import statistics
import time

import torch

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset
from fewshot.optim import make_optimizer


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_preset(name, data_spec, steps, warmup, overrides, device=torch.device("cpu")):
    config = apply_overrides(load_preset(name), {"data": data_spec, **overrides})
    dataset, refs = data.load(config, progress=False)
    sampler = data.sampler(config, dataset, refs, "train", config.seed)
    torch.manual_seed(config.seed)
    algorithm = algorithms.build(config).to(device)
    optimizer, _ = make_optimizer(algorithm, config)
    times = []
    for index in range(warmup + steps):
        tasks = [t.to(device) for t in sampler.batch(index, config.meta_batch)]
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        algorithm.meta_gradient(tasks, index)
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times = times[warmup:]
    images = sum(t.images for t in tasks)
    median = statistics.median(times)
    return {"preset": name, "median_s": median, "min_s": min(times), "max_s": max(times), "steps": steps,
            "meta_batch": config.meta_batch, "images_per_s": images / median,
            "first_order": config.first_order}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--presets", nargs="+", default=["omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s",
                                                         "omniglot-20w5s", "omniglot-5w1s-pytorch"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    overrides = {"first_order": True} if args.first_order else {}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [time_preset(p, args.data, args.steps, args.warmup, overrides, device) for p in args.presets]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    print("| preset | order | meta-batch | median s/step | min | max | images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        order = "first" if r["first_order"] else "second"
        print(f"| `{r['preset']}` | {order} | {r['meta_batch']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
              f"{r['max_s']:.3f} | {r['images_per_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
