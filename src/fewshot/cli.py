"""`fewshot`: a thin command line over the library. Each command parses its
arguments and calls one library function."""
import argparse
import json
import sys
from pathlib import Path

from .errors import FewshotError


def cmd_presets(args):
    from .config import load_preset, preset_names
    for name in preset_names():
        print(f"{name:24} {load_preset(name)['description']}")


def cmd_summary(args):
    from .summary import summary
    print(summary(_config(args)))


def cmd_data(args):
    from .data import images, omniglot
    root = Path(args.root) if args.root else images.home()
    folder = root / (args.name or args.dataset)
    if args.download == bool(args.source):
        raise FewshotError("give exactly one of --download or --from PATH")
    source = args.source or omniglot.download_official(folder, args.url or omniglot.OFFICIAL_URL,
                                                       progress=not args.no_progress)
    omniglot.import_omniglot(source, folder, size=args.size, progress=not args.no_progress)
    dataset = images.read_dataset(folder, args.size)
    print(f"prepared {len(dataset.classes)} classes, {len(dataset.images)} images at "
          f"{args.size}x{args.size} in {folder}; train with `fewshot train omniglot-5w1s --data {folder}`")


def cmd_train(args):
    from .train import train
    if args.resume:
        if args.preset or args.set or args.data:
            raise FewshotError("--resume continues a run with its own config; drop PRESET, --data and --set")
        result = train(out=args.resume, resume=True, device=args.device, progress=not args.no_progress)
    else:
        if not args.preset:
            raise FewshotError("name a preset (see `fewshot presets`) or give --resume RUN_DIR")
        if not args.out:
            raise FewshotError("give --out RUN_DIR, the folder for logs and checkpoints")
        result = train(_config(args), args.out, device=args.device, progress=not args.no_progress)
    if not result["stopped"]:
        print(f"done: {result['step']} steps in {result['out']}; evaluate with `fewshot eval {result['out']}`")


def cmd_eval(args):
    from .evaluate import describe, evaluate_checkpoint
    result = evaluate_checkpoint(args.target, tasks=args.tasks, split=args.split, steps=args.steps,
                                 data_spec=args.data, seed=args.seed, device=args.device,
                                 progress=not args.no_progress and not args.json)
    scores = result.pop("scores")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(describe(result))
    if args.scores:
        from .io import write_text
        write_text(args.scores, "".join(f"{s}\n" for s in scores))


def cmd_plot(args):
    from .plot import plot_run
    print(f"wrote {plot_run(args.run_dir, args.out)}")


def _config(args):
    from .config import apply_overrides, load_preset, parse_overrides
    config = load_preset(args.preset)
    overrides = parse_overrides(args.set)
    if getattr(args, "data", None):
        overrides["data"] = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    return apply_overrides(config, overrides)


def parser():
    p = argparse.ArgumentParser(prog="fewshot", description="Few-shot learning by meta-learning.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("presets", help="list the presets")
    s.set_defaults(run=cmd_presets)

    s = sub.add_parser("summary", help="print a preset's network: layers, output shapes, parameters")
    s.add_argument("preset")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset key")
    s.set_defaults(run=cmd_summary)

    s = sub.add_parser("data", help="download or import a dataset into the cache")
    s.add_argument("dataset", choices=["omniglot"])
    s.add_argument("--from", dest="source", metavar="PATH", help="import a copy you have")
    s.add_argument("--download", action="store_true", help="fetch the official files")
    s.add_argument("--root", help="folder for prepared datasets (default: $FEWSHOT_HOME or ~/.cache/fewshot)")
    s.add_argument("--name", help="folder name under the root (default: the dataset's name)")
    s.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    s.add_argument("--url", help="base URL to download from (default: the official repository)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=cmd_data)

    s = sub.add_parser("train", help="meta-train a preset, or continue a run with --resume")
    s.add_argument("preset", nargs="?")
    s.add_argument("--data", help="prepared dataset folder, raw copy, or name")
    s.add_argument("--out", help="run folder for config, logs and checkpoints")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset key")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint on a fixed set of test tasks")
    s.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--tasks", type=int, help="number of tasks (default: the preset's eval_tasks, 600)")
    s.add_argument("--split", default="test", help="test (default), val or train")
    s.add_argument("--steps", type=int, help="inner steps (default: the preset's eval_inner_steps)")
    s.add_argument("--data", help="dataset to evaluate on (default: the one it was trained on)")
    s.add_argument("--seed", type=int, help="seed of the task set (default: the preset's eval_seed)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument("--scores", metavar="FILE", help="also write each task's score, one per line")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=cmd_eval)

    s = sub.add_parser("plot", help="draw a run's learning curves to a PNG")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    s.set_defaults(run=cmd_plot)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except FewshotError as error:
        print(f"fewshot: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewshot: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
