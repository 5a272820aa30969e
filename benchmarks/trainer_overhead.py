"""What the trainer adds to the bare meta-step.

    python benchmarks/trainer_overhead.py --data ../shared/data/omniglot-28 --preset omniglot-5w1s \
        --steps 20 --rounds 3 --threads 1 [--device cuda] [--set batch_tasks=true]

Bare step: `zero_grad`, `meta_gradient`, `optimizer.step` on tasks sampled (and
moved to the device) beforehand; `--warmup` steps, then `--steps` timed ones, one
synchronisation at the end, mean seconds per step.
Trainer: `fewshot.train.train` of the same preset and settings into a temporary run
folder, `--warmup + --steps` steps with a log row every `--log-every` steps, no
validation or checkpoint before the end; seconds per step from its own log rows
(the first row, the warm-up, left out): everything the loop does between rows,
batch fetch, meta-step, optimizer, schedule, bookkeeping and the log row included.
The two alternate in one process (bare, trainer, bare, ...) for `--rounds` rounds.
Reported: each round's ratio (trainer over the bare step measured just before it),
their median (the figure to quote: on a shared machine the load drifts between
rounds more than the trainer costs), and the ratio of the two medians.
"""
import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset, parse_overrides
from fewshot.optim import make_optimizer
from fewshot.runs import read_metrics
from fewshot.train import train


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(config, device, steps, warmup):
    dataset, refs = data.load(config, progress=False)
    sampler = data.sampler(config, dataset, refs, "train", config.seed)
    batches = [[t.to(device) for t in sampler.batch(index, config.meta_batch)] for index in range(warmup + steps)]
    torch.manual_seed(config.seed)
    algorithm = algorithms.build(config).to(device)
    optimizer, _ = make_optimizer(algorithm, config)
    for index, tasks in enumerate(batches):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        algorithm.meta_gradient(tasks, index)
        optimizer.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def trainer(config, device, steps, warmup, log_every):
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        total = warmup + steps
        run = apply_overrides(config, {"steps": total, "log_every": log_every, "val_every": 10 * total,
                                       "save_every": 10 * total, "val_tasks": 1})
        train(run, Path(folder) / "run", device=str(device), progress=False)
        rows = [r for r in read_metrics(Path(folder) / "run") if r["step"] > warmup]
    # rows cover equal windows: their mean s/step is the mean over the timed steps
    return statistics.mean(r["sec_per_step"] for r in rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="omniglot-5w1s")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps % args.log_every or args.warmup % args.log_every:
        parser.error("--steps and --warmup must be multiples of --log-every")
    device = torch.device(args.device)
    config = apply_overrides(load_preset(args.preset), {"data": args.data, **parse_overrides(args.set)})
    rounds = []
    for index in range(args.rounds):
        rounds.append({"bare_s": bare(config, device, args.steps, args.warmup),
                       "trainer_s": trainer(config, device, args.steps, args.warmup, args.log_every)})
        print(json.dumps(rounds[-1]), flush=True)
    bare_s = statistics.median(r["bare_s"] for r in rounds)
    trainer_s = statistics.median(r["trainer_s"] for r in rounds)
    summary = {"preset": args.preset, "overrides": args.set or [], "device": str(device),
               "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
               "rounds": rounds, "bare_s": bare_s, "trainer_s": trainer_s, "ratio_of_medians": trainer_s / bare_s,
               "ratio_per_round": [r["trainer_s"] / r["bare_s"] for r in rounds],
               "median_ratio": statistics.median(r["trainer_s"] / r["bare_s"] for r in rounds),
               "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    print("| preset | device | threads | bare s/step (median) | trainer s/step (median) | trainer / bare per round "
          "| median of those |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| `{args.preset}` {' '.join(args.set or [])} | {device} | {summary['threads']} | {bare_s:.4f} | "
          f"{trainer_s:.4f} | {', '.join(f'{r:.2f}' for r in summary['ratio_per_round'])} | "
          f"{summary['median_ratio']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
