"""Two `fewshot train` runs started together on one machine: does each keep its speed?

    python benchmarks/contention.py --data ../shared/data/omniglot-28 --steps 12

For each setting, runs the real CLI once alone and then twice at the same time
(subprocesses, `omniglot-5w1s`, `--steps` meta-steps, validation and checkpoints
pushed past the end), reads seconds per step from each run's metrics.jsonl (the
first log row, the warm-up, left out; median of the rest) and prints a Markdown
table: solo s/step, the pair's s/step, and the share of the solo speed each of the
pair kept. Settings:

- `old`: what `fewshot train` did before OMP_WAIT_POLICY was set: torch imported
  first (OpenMP's default, spinning, wait policy), torch's default threads;
- `new`: `fewshot train` as it is: OMP_WAIT_POLICY=PASSIVE set by fewshot/__init__.py
  before torch loads, default threads;
- `new-1thread`: the same with `--threads 1`.

A run that has not finished after `--timeout` seconds is stopped; its rows so far count.
The machine may be shared: say so with the figures (`--note`).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD = "import sys, torch; from fewshot.cli import main; sys.exit(main(sys.argv[1:]))"  # torch before fewshot


def command(setting, data, out, steps):
    args = ["train", "omniglot-5w1s", "--data", data, "--out", str(out), "--no-progress",
            "--set", f"steps={steps}", "--set", "log_every=2", "--set", f"val_every={10 * steps}",
            "--set", f"save_every={10 * steps}", "--set", "val_tasks=1"]
    if setting == "old":
        return [sys.executable, "-c", OLD, *args]
    extra = ["--threads", "1"] if setting == "new-1thread" else []
    return [sys.executable, "-m", "fewshot", *args, *extra]


def environment():
    env = dict(os.environ)
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS"):
        env.pop(key, None)  # each setting chooses for itself
    return env


def sec_per_step(out):
    path = Path(out) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    timed = [r["sec_per_step"] for r in rows[1:]]
    return statistics.median(timed) if timed else float("nan"), 2 * len(timed)


def together(setting, data, root, steps, count, timeout):
    outs = [root / f"{setting}-{count}-{i}" for i in range(count)]
    procs = [subprocess.Popen(command(setting, data, out, steps), env=environment(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for out in outs]
    deadline, cut = time.monotonic() + timeout, False
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()  # saves and stops; the rows written so far count
            p.wait()
            cut = True
    return [sec_per_step(out) for out in outs], cut


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a run is stopped")
    parser.add_argument("--settings", nargs="+", default=["old", "new", "new-1thread"])
    parser.add_argument("--json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="contention-"))
    rows = []
    try:
        for setting in args.settings:
            (solo,), solo_cut = together(setting, args.data, root, args.steps, 1, args.timeout)
            pair, pair_cut = together(setting, args.data, root, args.steps, 2, args.timeout)
            rows.append({"setting": setting, "solo_s": solo[0], "pair_s": [p[0] for p in pair],
                         "timed_steps": [solo[1], *[p[1] for p in pair]], "cut_short": solo_cut or pair_cut,
                         "kept": [solo[0] / p[0] for p in pair], "load_after": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| setting | solo s/step | together s/step (run 1, run 2) | share of solo speed kept | cut short |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| `{r['setting']}` | {r['solo_s']:.3f} | {r['pair_s'][0]:.3f}, {r['pair_s'][1]:.3f} | "
              f"{100 * r['kept'][0]:.0f}%, {100 * r['kept'][1]:.0f}% | {'yes' if r['cut_short'] else 'no'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
