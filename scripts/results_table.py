"""Markdown tables of results.

    python scripts/results_table.py runs/family/*        # evaluated run folders
    python scripts/results_table.py --shipped            # the shipped models, from their cards
    python scripts/results_table.py --shipped --write docs/results.md   # ... into the document, between its markers,
                                                                        # and each model's curve into docs/img/models/

Run folders: RUN_DIR/eval.json (from `fewshot eval --json`) beside the steps run, the
wall-clock time and the paper's number from the preset. Shipped models: one row per
card in src/fewshot/pretrained/ ($FEWSHOT_PRETRAINED if set); tests/test_zoo.py keeps
the table in docs/results.md equal to the cards.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

from fewshot import checkpoint, zoo
from fewshot.errors import FewshotError
from fewshot.files import write_text


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


def runs_table(runs):
    lines = ["| preset | meta-steps run | minutes (last process) | evaluated checkpoint step | "
             "test accuracy % (600 tasks, 95% CI) | paper |",
             "| --- | --- | --- | --- | --- | --- |"]
    return "\n".join(lines + [row(run) for run in runs if (Path(run) / "eval.json").exists()])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="evaluated run folders")
    p.add_argument("--shipped", action="store_true", help="the table of the shipped models, from their cards")
    p.add_argument("--write", metavar="DOC", help="with --shipped: replace the table between DOC's markers")
    args = p.parse_args(argv)
    if args.write and not args.shipped:
        p.error("--write goes with --shipped")
    if not args.shipped:
        print(runs_table(args.runs))
        return 0
    table = zoo.results_table(zoo.cards())
    if not args.write:
        print(table)
        return 0
    document = Path(args.write)
    try:
        write_text(document, zoo.with_table(document.read_text(encoding="utf-8"), table))
    except FewshotError as error:
        print(f"fewshot: error: {document}: {error}", file=sys.stderr)
        return 2
    from fewshot.plot import plot_card
    shipped = zoo.cards()
    for card in shipped:
        plot_card(card, document.parent / zoo.CURVES / f"{card.name}.png")
    print(f"wrote the table of {len(shipped)} shipped model{'s' if len(shipped) != 1 else ''} into {document}, "
          f"their curves into {document.parent / zoo.CURVES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
