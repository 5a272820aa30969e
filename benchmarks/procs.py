"""Task-parallel speed-up: the same preset trained for --steps meta-steps with one
process (all threads) and with N processes (one thread each), alternating, reading
seconds per step from each run's metrics (the first logged window, which includes
start-up, is dropped).

    python benchmarks/procs.py --data ../shared/data/omniglot-28 --preset omniglot-5w1s --steps 60 --procs 2
"""
import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from fewshot.config import apply_overrides, load_preset
from fewshot.train import train


def seconds_per_step(config, procs, threads):
    with tempfile.TemporaryDirectory() as out:
        train(config, Path(out) / "run", progress=False, procs=procs, threads=threads)
        rows = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["sec_per_step"] for r in rows[1:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="omniglot-5w1s")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dict(pair.split("=", 1) for pair in args.set)
    overrides = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v for k, v in overrides.items()}
    config = apply_overrides(load_preset(args.preset), {"data": args.data, "steps": args.steps, "log_every": 10,
                                                       "val_every": 10 ** 9, "save_every": 10 ** 9, **overrides})
    cores = os.cpu_count()
    single, multi = [], []
    for _ in range(args.repeats):
        single.append(seconds_per_step(config, 1, cores))
        multi.append(seconds_per_step(config, args.procs, max(1, cores // args.procs)))
    a, b = statistics.median(single), statistics.median(multi)
    print(f"{args.preset} {overrides or ''}: 1 process x {cores} threads {a:.3f} s/step; "
          f"{args.procs} processes x {max(1, cores // args.procs)} thread(s) {b:.3f} s/step; speed-up {a / b:.2f}x")


if __name__ == "__main__":
    main()
