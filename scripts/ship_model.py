"""Ship a trained run as a model of the package: its weights without the meta-training
state, evaluated on the preset's fixed test tasks (the figure `fewshot eval NAME` then
gives exactly), written with a card into src/fewshot/pretrained/ ($FEWSHOT_PRETRAINED
if set). Then regenerate the table of docs/results.md.

    python scripts/ship_model.py RUN NAME [--data DATA] [--paper FIGURE --source SOURCE]
        [--machine TEXT] [--train-command CMD ...] [--set eval_ways=20 ...] [--note TEXT] [--threads N]
        [--force | --keep-test]
    python scripts/results_table.py --shipped --write docs/results.md

RUN is a run folder (its best.pt, else last.pt) or a .pt file. Bad input is one
`fewshot: error: ...` line and exit status 2.
"""
import argparse
import shlex
import sys

from fewshot import zoo
from fewshot.cli import os_error_line
from fewshot.errors import FewshotError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ship_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="a run folder or a .pt file")
    p.add_argument("name", metavar="NAME", help="the model's name, e.g. maml-omniglot-5w1s")
    p.add_argument("--data", help="the dataset the model names: a name under FEWSHOT_HOME or a relative path "
                   "(default: the run's)")
    p.add_argument("--paper", help="the paper's figure (default: from the preset's description)")
    p.add_argument("--source", help="the paper and table or figure (default: from the preset's description)")
    p.add_argument("--machine", help="where it trained, e.g. 'the shared 2-core CPU machine' (default: this CPU)")
    p.add_argument("--train-command", action="append", metavar="CMD",
                   help="a command that trained the run, in order (default: one rebuilt from its config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="test it with this evaluation setting "
                   "instead of the run's: eval_ways, eval_query, eval_inner_steps, eval_inner_lr, eval_inner_batch "
                   "(e.g. eval_ways=20 for ProtoNets' 20-way cell); repeat for several")
    p.add_argument("--note", default="", help="why the cell differs from its paper, or how the run went")
    p.add_argument("--threads", type=int, help="torch threads for the evaluation")
    p.add_argument("--force", action="store_true", help="replace a model already shipped under NAME")
    p.add_argument("--keep-test", action="store_true", help="replace the card of a model already shipped under NAME "
                   "from these same weights, keeping its test figures instead of reading the test tasks again "
                   "(to correct its note, machine or commands)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        from fewshot.device import set_threads
        set_threads(args.threads)
        from fewshot.config import parse_overrides
        card = zoo.ship(args.run, args.name, data=args.data, paper_figure=args.paper, paper_source=args.source,
                        machine=args.machine, train_commands=args.train_command,
                        evaluation=parse_overrides(args.set), notes=args.note, force=args.force,
                        keep_test=args.keep_test,
                        ship_command=shlex.join(["python", "scripts/ship_model.py",
                                                 *[zoo.relative_path(a) if a == args.run else a
                                                   for a in (sys.argv[1:] if argv is None else argv)]]),
                        progress=not args.no_progress and sys.stderr.isatty())
    except FewshotError as error:
        print(f"fewshot: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"fewshot: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    print("\n".join(zoo.card_lines(card)))
    print("now regenerate the table: python scripts/results_table.py --shipped --write docs/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
