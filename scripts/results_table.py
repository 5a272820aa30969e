"""Markdown table of evaluated runs: RUN_DIR/eval.json (from `fewshot eval --json`)
beside the steps run, the wall-clock time and the paper's number from the preset.

    python scripts/results_table.py runs/family/*
"""
import json
import sys
from pathlib import Path

import yaml

from fewshot import checkpoint


def row(run):
    run = Path(run)
    result = json.loads((run / "eval.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-1] if rows else {}
    steps = checkpoint.load(run / "last.pt")["step"]
    paper = config.get("description", "").split("paper ")[-1] if "paper " in config.get("description", "") else "-"
    minutes = f"{last['elapsed_s'] / 60:.1f}" if last else "-"
    return (f"| `{config.get('preset')}` | {steps} of {config['steps']} | {minutes} | {result['step']} | "
            f"{100 * result['mean']:.2f} +- {100 * result['ci95']:.2f} | {paper} |")


if __name__ == "__main__":
    print("| preset | meta-steps run | minutes (last process) | evaluated checkpoint step | test accuracy % (600 tasks, 95% CI) | paper |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in sys.argv[1:]:
        if (Path(run) / "eval.json").exists():
            print(row(run))
