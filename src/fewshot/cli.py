"""`fewshot`: a thin command line over the library. Each command parses its
arguments, checks them (before any folder is created or torch is imported), and
calls one library function.

Exit statuses, the one rule for every command (see main()): 0 done (a time-limit or
stop_at_val stop included); 2 a problem with what was given or with the machine (a
FewshotError, or an OS error such as a full disk, a read-only file system or a folder
where a file belongs), reported in one line naming the problem and a fix; 130 / 143
interrupted by SIGINT / SIGTERM, after saving; 1 a bug in fewshot (a traceback).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import FewshotError
from .files import check_output, holds_run, is_predictions, is_scores


def cmd_presets(args: argparse.Namespace) -> None:
    from .config import load_preset, preset_names, schema_lines
    if args.keys:
        print("\n".join(schema_lines()))
        return
    if args.markdown:
        from .presets_table import markdown
        print(markdown())
        return
    for name in preset_names():
        print(f"{name:27} {load_preset(name).description}")


def cmd_summary(args: argparse.Namespace) -> None:
    config = _config(args)
    from .summary import summary
    print(summary(config))


def cmd_data(args: argparse.Namespace) -> None:
    if args.size is not None and not 1 <= args.size <= 1024:
        raise FewshotError(f"--size takes an image side of 1 to 1024 pixels, got {args.size}")
    if args.seed < 0:
        raise FewshotError(f"--seed must be at least 0, got {args.seed}")
    if args.name is not None and (Path(args.name).name != args.name or args.name in ("", ".", "..")):
        raise FewshotError(f"--name takes a plain folder name, got {args.name!r}; choose the parent folder with --root")
    if args.dataset == "miniimagenet" and (not args.source or args.download):
        raise FewshotError("fewshot data miniimagenet takes --from PATH (images/ with the split CSVs, "
                           "a tree of <wnid>/ folders, or learn2learn's pickles); it is not downloadable")
    if args.dataset == "folder" and (not args.source or args.download):
        raise FewshotError("fewshot data folder takes --from DIR (a tree of <class>/<image> folders)")
    if args.dataset == "omniglot" and args.download == bool(args.source):
        raise FewshotError("give exactly one of --download or --from PATH")
    ratios = _ratios(args.ratios) if args.dataset == "folder" else None
    from .data import images
    from .data.kinds import DATASETS
    root = Path(args.root) if args.root else images.home()
    target = root / (args.name or args.dataset)
    if target.exists() and not target.is_dir():
        raise FewshotError(f"{target} is a file, not a dataset folder; choose another --name or --root")
    if holds_run(target):
        raise FewshotError(f"{target} holds a training run; choose another --name or --root for the dataset")
    if images.is_prepared(target) and not args.force:
        raise FewshotError(f"{target} already holds a prepared dataset that runs may have been trained on; "
                           f"choose another --name, or pass --force to replace it")
    created = not target.exists()
    size = args.size or DATASETS.get(args.dataset).default_size  # each dataset kind knows its usual side
    try:
        _prepare(args, target, ratios, size)
    except BaseException:
        if created and target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # a failed import leaves no empty folder behind (a download's raw/ stays)
        raise
    dataset = images.read_dataset(target, size)
    groups = {}
    for c in dataset.classes:
        groups[c.group] = groups.get(c.group, 0) + 1
    counts = ", ".join(f"{n} {g}" for g, n in groups.items())
    print(f"prepared {len(dataset.classes)} classes ({counts}), {len(dataset.images)} images at "
          f"{size}x{size} in {target}; train with `fewshot train PRESET --data {target}`")


def _prepare(args, target, ratios, size):
    from .data import folder, images, miniimagenet, omniglot
    if args.dataset == "miniimagenet":
        miniimagenet.import_miniimagenet(args.source, target, size=size, progress=not args.no_progress,
                                         csv_dir=args.csv_dir, allow_partial=args.allow_partial)
        for line in miniimagenet.summary(images.read_dataset(target, size)):
            print(line)
    elif args.dataset == "folder":
        folder.import_folder(args.source, target, size=size, channels=args.channels,
                             ratios=ratios, seed=args.seed, progress=not args.no_progress)
    else:
        source = args.source or omniglot.download_official(target, args.url or omniglot.OFFICIAL_URL,
                                                           progress=not args.no_progress)
        omniglot.import_omniglot(source, target, size=size, progress=not args.no_progress)


def _minutes(value):
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise FewshotError(f"--time-limit takes a finite number of minutes > 0, got {value}")
    return value * 60


def _ratios(text):
    try:
        ratios = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise FewshotError(f"--ratios takes three ratios like 0.64,0.16,0.20, got {text!r}") from None
    if not all(math.isfinite(r) for r in ratios):
        raise FewshotError(f"--ratios takes three finite ratios like 0.64,0.16,0.20, got {text!r}")
    return ratios


def _device(args):
    """(the device the command runs on, the line saying which was chosen or None): the
    library checks a --device given and chooses the best device present when none is."""
    from .device import choose_device
    device, line = choose_device(args.device)
    return str(device), line


def _check_run_out(out):
    """A training run's --out must be a folder that is not a dataset or a pretraining."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FewshotError(f"--out {out} is a file; give a folder for the run")
    if (out / "index.json").is_file():
        raise FewshotError(f"--out {out} holds a prepared dataset; give another folder for the run")
    if (out / "pretrain.pt").exists() or (out / "embed.json").exists():
        raise FewshotError(f"--out {out} holds fewshot embed's files; give another folder for the run")


def cmd_train(args: argparse.Namespace) -> int:
    time_limit = _minutes(args.time_limit)
    if args.resume or args.out:
        _check_run_out(args.resume or args.out)
    if args.resume and (args.preset or args.data or args.init):
        raise FewshotError("--resume continues a run with its own config; drop PRESET, --data and --init (--steps N "
                           "extends it; --set compile=true, batch_tasks=... or tasks_per_pass=... changes how a step "
                           "is computed)")
    if not args.resume and not args.preset:
        raise FewshotError("name a preset (see `fewshot presets`) or give --resume RUN_DIR")
    if not args.resume and not args.out:
        raise FewshotError("give --out RUN_DIR, the folder for logs and checkpoints")
    config = None if args.resume else _config(args)  # every setting checked before train() creates the folder
    device, line = _device(args)
    leader = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks
    if line and leader:
        print(line, flush=True)
    from .train import train
    result = train(config, args.resume or args.out, resume=bool(args.resume), device=device,
                   progress=not args.no_progress, threads=args.threads, procs=args.procs, time_limit=time_limit,
                   steps=args.steps, changes=_resume_changes(args))
    # train() itself says why a run stopped early (a signal, the time limit) and that it saved
    if result.get("signal"):  # a nonzero status, so that `fewshot train ... && fewshot eval ...` stops here
        return 128 + int(result["signal"])
    if not result["stopped"] and leader:
        print(f"done: {result['step']} steps in {result['out']}; evaluate with `fewshot eval {result['out']}`")
    return 0


def _resume_changes(args):
    """--set of a resume: the settings train() lets a resume change (train.RESUME_KEYS)."""
    if not args.resume:
        return None
    from .config import parse_overrides
    return parse_overrides(args.set)


def cmd_eval(args: argparse.Namespace) -> None:
    at_steps = None if args.at_steps is None else _at_steps(args.at_steps)
    if args.scores:
        check_output(args.scores, "--scores", "scores.txt", ours=is_scores)
    device, line = _device(args)
    from .device import set_threads
    if args.lake and (any(v is not None for v in (args.tasks, args.data, args.seed, args.scores, args.at_steps))
                      or args.classes != "test" or args.any_kind):
        raise FewshotError("--lake scores Lake's 20 published runs; --tasks, --classes, --data, --any-kind, --seed, "
                           "--scores and --at-steps do not apply to it (only --inner-steps, --inner-lr, --shift, "
                           "--device, --json)")
    set_threads(args.threads)
    progress = not args.no_progress and not args.json
    target, *ensemble = args.target
    if args.lake:
        from .lake import describe_lake as describe, evaluate_lake
        result = evaluate_lake(target, args.lake, steps=args.inner_steps, lr=args.inner_lr, device=device,
                               progress=progress, shift=args.shift, ensemble=ensemble)
    else:
        from .evaluate import describe, evaluate_checkpoint
        result = evaluate_checkpoint(target, tasks=args.tasks, split=args.classes, steps=args.inner_steps,
                                     lr=args.inner_lr, data_spec=args.data, seed=args.seed, device=device,
                                     any_kind=args.any_kind, progress=progress, at_steps=at_steps,
                                     shift=args.shift, ensemble=ensemble)
        scores = result.pop("scores")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("\n".join(filter(None, [line, describe(result)])))
    if args.scores:
        from .files import write_text
        write_text(args.scores, "".join(f"{s}\n" for s in scores))


def _at_steps(text):
    try:
        counts = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        counts = None
    if not counts or any(c < 0 for c in counts):
        raise FewshotError(f"--at-steps takes inner-step counts >= 0 separated by commas, e.g. 0,1,10; got {text!r}")
    return counts


def cmd_embed(args: argparse.Namespace) -> int | None:
    if not args.out:
        raise FewshotError("give --out DIR, the folder for the embedding files")
    if (args.preset is None) == (args.from_model is None):
        raise FewshotError("give an image preset to pretrain a backbone (`fewshot embed PRESET --out DIR`), or "
                           "--from-model NAME to embed with a trained LEO model's backbone, not both")
    if args.from_model is not None:
        given = [flag for flag, value in _pretraining_options(args) if value is not None]
        if given:
            raise FewshotError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} pretraining, and --from-model "
                               f"does none: it embeds with {args.from_model}'s trained backbone as it is; drop "
                               f"{'it' if len(given) == 1 else 'them'}, or pretrain anew with `fewshot embed PRESET`")
    from .embed import check_out, embed, embed_from
    crops = tuple(c for c in args.crops.split(",") if c)
    if args.preset is not None:
        args.preset = _image_counterpart(args.preset)
        config = _config(args, model=args.backbone)  # the backbone is checked with the rest of the config
    check_out(args.out)  # before the data is loaded
    device, line = _device(args)
    from .device import set_threads
    set_threads(args.threads)
    if line:
        print(line, flush=True)
    if args.from_model is not None:
        result = embed_from(args.from_model, args.out, args.data, crops=crops, device=device,
                            progress=not args.no_progress)
    else:
        given = {name: value for name, value in (("steps", args.pretrain_steps), ("batch_size", args.batch_size),
                                                  ("lr", args.lr), ("val_every", args.val_every)) if value is not None}
        result = embed(config, args.out, device=device, progress=not args.no_progress, crops=crops,
                       time_limit=_minutes(args.time_limit), **given)
    if result["stopped"]:
        why = f" (the time limit of {args.time_limit:g} minutes)" if result.get("reason") == "time_limit" else ""
        print(f"stopped at pretraining step {result['steps']}{why}, saved; run the same command again to continue",
              file=sys.stderr if result.get("signal") else sys.stdout)
        return 128 + int(result["signal"]) if result.get("signal") else 0
    leo = result["leo_presets"]
    presets = leo["presets"] or ["LEO_PRESET"]
    dim = f" --set embedding_dim={result['dim']}" if leo["set_dim"] else ""
    others = f" (or {', '.join(presets[1:])})" if len(presets) > 1 else ""
    if args.from_model is not None:
        weights = f" with the image backbone of {args.from_model} (pretraining step {result['embedded_step']})"
    elif result["embedded_step"] != result["steps"]:
        weights = f" (the weights of pretraining step {result['embedded_step']}, the best by validation)"
    else:
        weights = ""
    print(f"wrote {len(result['files'])} files of {result['dim']}-d embeddings under {result['out']}{weights}; train "
          f"LEO on them with `fewshot train {presets[0]} --data {result['out']} --out RUN_DIR{dim}`{others}")


def _pretraining_options(args: argparse.Namespace) -> tuple[tuple[str, object], ...]:
    """`fewshot embed`'s options that set pretraining, as (flag, value given or None)."""
    return (("--set", args.set), ("--backbone", args.backbone), ("--pretrain-steps", args.pretrain_steps),
            ("--batch-size", args.batch_size), ("--lr", args.lr), ("--val-every", args.val_every),
            ("--time-limit", args.time_limit))


def _image_counterpart(preset):
    """`fewshot embed` takes an image preset; given a LEO preset on embeddings it uses the
    image preset those embeddings are made with (the preset's `image_preset`), and says so."""
    from .config import load_preset
    config = load_preset(preset)
    if config.dataset != "embeddings":
        return preset
    if config.image_preset is None:
        raise FewshotError(f"{preset} trains LEO on precomputed embeddings that no image preset here makes (e.g. "
                           f"LEO's published WRN-28-10 features); give fewshot embed an image preset, e.g. "
                           f"`fewshot embed maml-miniimagenet-5w1s --backbone wrn28_10`")
    print(f"fewshot: note: {preset} is a LEO preset on embeddings; embedding with its image preset "
          f"{config.image_preset}", file=sys.stderr)
    return config.image_preset


def cmd_plot(args: argparse.Namespace) -> None:
    several = len(args.run_dir) > 1
    if several and args.adaptation:
        raise FewshotError("--adaptation draws one run; give one RUN_DIR")
    out = args.out or ("curves.png" if several else None)
    if out:
        check_output(out, "--out", "curves.png", text=False)
    from .plot import plot_adaptation, plot_run, plot_runs
    if several:
        print(f"wrote {plot_runs(args.run_dir, out)}")
    else:
        print(f"wrote {(plot_adaptation if args.adaptation else plot_run)(args.run_dir[0], out)}")


def _shown(text):
    """A file or class name as text that prints and encodes anywhere: bytes that are not
    UTF-8 (kept by Python as surrogates) appear as \\xNN escapes."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def prediction_lines(rows: list[dict], header: bool = True) -> list[str]:
    """predict's text output: per image, the file, the predicted label and its probability, then the
    other classes of its top k in parentheses; columns aligned, under a header when `header`."""
    file_width = max(len("file"), *(len(r["file"]) for r in rows))
    label_width = max(len("label"), *(len(label) for r in rows for label, _ in r["top"]))
    others = any(len(r["top"]) > 1 for r in rows)
    lines = [f"{'file':{file_width}}  {'label':{label_width}}  probability" + ("  (next most likely)" if others
                                                                               else "")] if header else []
    for r in rows:
        top = "  ".join(f"{label:{label_width}} {p:.3f}" for label, p in r["top"][1:])
        lines.append(f"{r['file']:{file_width}}  {r['label']:{label_width}}  {r['probability']:11.3f}"
                     + (f"  ({top})" if top else ""))
    return lines


def cmd_predict(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise FewshotError(f"--top-k must be at least 1, got {args.top_k}")
    if args.csv:
        check_output(args.csv, "--csv", "predictions.csv", ours=is_predictions)
    device, line = _device(args)
    from .device import set_threads
    from .predict import load
    set_threads(args.threads)
    learner = load(args.checkpoint, device=device)
    adapted = learner.adapt(args.support, steps=args.inner_steps, lr=args.inner_lr, shift=args.shift)
    rows = adapted.classify(args.query, top_k=args.top_k, transductive=args.transductive)
    classes = [_shown(c) for c in adapted.classes]
    rows = [{**r, "file": _shown(r["file"]), "label": _shown(r["label"]),
             "top": [(_shown(c), p) for c, p in r["top"]],
             "probabilities": {_shown(c): p for c, p in r["probabilities"].items()}} for r in rows]
    if args.json:
        print(json.dumps({"checkpoint": _shown(args.checkpoint), "device": device, "classes": classes,
                          "predictions": [{k: r[k] for k in ("file", "label", "probabilities")} for r in rows]},
                         indent=1))
    else:
        print("\n".join(prediction_lines(rows)))
        if line:  # stdout is the table: the device chosen is said beside it
            print(line, file=sys.stderr)
    if args.csv:
        import csv
        import io
        from .files import write_text
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "label", "probability", *[f"p_{c}" for c in classes]])
        for r in rows:
            writer.writerow([r["file"], r["label"], f"{r['probability']:.6f}",
                             *[f"{r['probabilities'][c]:.6f}" for c in classes]])
        write_text(args.csv, buffer.getvalue())


def cmd_models(args: argparse.Namespace) -> None:
    from . import zoo
    if args.name:
        card = zoo.card(args.name)
        print(json.dumps(card.to_dict(), indent=1) if args.json else "\n".join(zoo.card_lines(card)))
    elif args.json:
        print(json.dumps([card.to_dict() for card in zoo.cards()], indent=1))
    else:
        print("\n".join(zoo.listing()))


def _config(args, **options):
    """The preset with --set, --data, --init and `options` (those not None) applied, checked."""
    from .config import apply_overrides, load_preset, parse_overrides
    from .runs import portable
    config = load_preset(args.preset)
    overrides = parse_overrides(args.set)
    if getattr(args, "data", None):
        # absolute, so that the run resumes from any folder; the home folder written ~, as checkpoints do
        overrides["data"] = portable(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    if getattr(args, "init", None):
        overrides["init"] = args.init
    overrides.update((name, value) for name, value in options.items() if value is not None)
    return apply_overrides(config, overrides)


SET_HELP = ("override a preset key; repeat it for several keys (--set steps=600 --set inner_lr=0.1); "
            "`fewshot presets --keys` lists every key with its type, default and range")
# Every flag that several commands take, written once: flag -> argparse settings. Its help is
# its one meaning; a command may add what the flag names there (`_shared(s, "--out", ": ...")`),
# never another meaning (tests/test_cli.py walks every command to check).
SHARED = {
    "--data": dict(help="the dataset: a prepared folder, a raw copy, or the name of a folder under $FEWSHOT_HOME"),
    "--set": dict(action="append", metavar="KEY=VALUE", help=SET_HELP),
    "--device": dict(help="where to run: cpu, cuda, cuda:N or mps (default: $FEWSHOT_DEVICE where set, else the "
                          "best device present: CUDA, then MPS, then the CPU; the command says which)"),
    "--threads": dict(type=int, help="torch threads in this process (default: one per core); use 1 when other "
                                     "jobs share the cores"),
    "--json": dict(action="store_true", help="print one JSON document"),
    "--no-progress": dict(action="store_true", help="no progress bar"),
    "--out": dict(help="where to write"),
    "--seed": dict(type=int, help="the seed of what this command draws at random"),
    "--inner-steps": dict(type=int, metavar="N", help="inner steps at test, adapting to each support set "
                                                      "(default: the checkpoint's eval_inner_steps)"),
    "--time-limit": dict(type=float, metavar="MINUTES", help="stop cleanly after this many minutes"),
    "--inner-lr": dict(type=float, metavar="LR", help="inner learning rate at test (default: the checkpoint's "
                                                      "eval_inner_lr, or its learned rates)"),
    "--shift": dict(type=int, metavar="PIXELS", help="test-time augmentation: each image also shifted by up to "
                                                     "PIXELS each way, the support set grown by the copies and each "
                                                     "query's outputs averaged over its own (default: the run's "
                                                     "eval_shift, 0 unless its preset sets it)"),
}


def _shared(s, flag, detail="", **settings):
    """Add SHARED flag `flag` to command parser `s`; `detail` says what it names there."""
    options = {**SHARED[flag], **settings}
    options["help"] += detail
    return s.add_argument(flag, **options)


class Moved(argparse.Action):
    """An old spelling whose meaning now has its own flag: the command becomes one error
    line naming that flag (status 2), instead of being read with another meaning."""

    def __init__(self, option_strings: Sequence[str], dest: str, now: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", help=argparse.SUPPRESS)
        self.now = now

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        line = f"{parser.prog.split()[-1]} {option_string} is now {self.now}"

        def refuse(args):
            raise FewshotError(line)
        namespace.run = refuse


def _command(sub, name, run, help, shared=()):
    """A subcommand, with the SHARED flags named in `shared`."""
    s = sub.add_parser(name, help=help, description=help)
    s.set_defaults(run=run)
    for flag in shared:
        _shared(s, flag)
    return s


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot", description="Few-shot learning by meta-learning.")
    p.add_argument("--version", action="version", version=f"fewshot {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = _command(sub, "presets", cmd_presets, "list the presets (--keys: every config key)")
    s.add_argument("--keys", action="store_true",
                   help="print every config key: type, default, range, who reads it, meaning")
    s.add_argument("--markdown", action="store_true", help="print the presets as the README's markdown table")

    s = _command(sub, "summary", cmd_summary, "print a preset's network: layers, output shapes, parameters",
                 shared=["--set"])
    s.add_argument("preset", help="a preset (`fewshot presets`) or a .yaml file of keys")

    s = _command(sub, "data", cmd_data, "download or import a dataset into the cache", shared=["--no-progress"])
    s.add_argument("dataset", choices=["omniglot", "miniimagenet", "folder"])
    s.add_argument("--from", dest="source", metavar="PATH", help="import a copy you have")
    s.add_argument("--download", action="store_true", help="fetch the official files")
    s.add_argument("--root", help="folder for prepared datasets (default: $FEWSHOT_HOME or ~/.cache/fewshot)")
    s.add_argument("--name", help="folder name under the root (default: the dataset's name)")
    s.add_argument("--size", type=int, help="image side in pixels (default: the usual side of the dataset kind, "
                   "e.g. 28 for omniglot)")
    s.add_argument("--csv-dir", help="miniimagenet: folder of train.csv / val.csv / test.csv")
    s.add_argument("--allow-partial", action="store_true",
                   help="miniimagenet: import the images present when the CSVs name missing ones")
    s.add_argument("--url", help="base URL to download from (default: the official repository)")
    s.add_argument("--channels", type=int, choices=[1, 3], help="folder: 1 (gray) or 3 (RGB); default: as the images")
    s.add_argument("--ratios", default="0.64,0.16,0.20", metavar="TRAIN,VAL,TEST",
                   help="folder without train/val/test: the share of the classes in each (default 0.64,0.16,0.20)")
    _shared(s, "--seed", ": folder, the class split (default 0)", default=0)
    s.add_argument("--force", action="store_true", help="replace a dataset already prepared under that name")
    s.add_argument("--split", action=Moved, now="--ratios (the share of the classes in train, val and test)")

    s = _command(sub, "train", cmd_train, "meta-train a preset, or continue a run with --resume",
                 shared=["--data", "--set", "--device", "--no-progress"])
    s.add_argument("preset", nargs="?", help="a preset (`fewshot presets`) or a .yaml file of keys")
    _shared(s, "--out", ": the run folder, for config, logs and checkpoints")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    s.add_argument("--steps", type=int, metavar="N", help="with --resume: train until meta-step N (extends a "
                   "finished or stopped run; the schedule follows the new length); --set with --resume changes "
                   "only how a step is computed: compile, batch_tasks, tasks_per_pass")
    s.add_argument("--init", metavar="CHECKPOINT", help="start from another run's weights (a run folder: its "
                   "best.pt; or a .pt file), with a fresh optimizer and step 0: transfer learning")
    _shared(s, "--threads", "; overrides the preset's `threads`")
    _shared(s, "--time-limit", " (continue later with --resume)")
    s.add_argument("--procs", type=int, default=1, help="split each meta-batch across N local processes "
                   "(torch.distributed; for several machines launch with torchrun instead)")

    s = _command(sub, "embed", cmd_embed, "pretrain a backbone on the meta-train classes, write LEO embedding files",
                 shared=["--data", "--set", "--device", "--threads", "--no-progress"])
    s.add_argument("preset", nargs="?", help="an image preset: its dataset, split, image size and backbone")
    s.add_argument("--from-model", metavar="NAME", help="no pretraining: embed with the image backbone of a "
                   "trained LEO model (a shipped model's name, or a LEO run) the data it was pretrained on "
                   "(or --data)")
    s.add_argument("--backbone", help="network to pretrain: a backbone with a head and batch norm, one that "
                   "reads them in `fewshot presets --keys` (default: the preset's conv4)")
    _shared(s, "--out", ": the folder for center/ and multiview/ {train,val,test}_embeddings.pkl")
    s.add_argument("--pretrain-steps", type=int, metavar="N",
                   help="supervised pretraining steps (default 2000)")
    s.add_argument("--batch-size", type=int, help="pretraining batch size (default 64)")
    s.add_argument("--lr", type=float, help="pretraining Adam learning rate (default 1e-3)")
    s.add_argument("--crops", default="center,multiview",
                   help="embeddings to write: center, multiview or both (default; multiview is 6 passes per image)")
    s.add_argument("--val-every", type=int, metavar="N",
                   help="validate the features every N pretraining steps on the validation classes (nearest-"
                        "prototype accuracy of the preset's tasks) and embed with the best weights; 0: never "
                        "(default 1000)")
    _shared(s, "--time-limit", " of pretraining (the same command again continues it)")
    s.add_argument("--steps", action=Moved, now="--pretrain-steps")

    s = _command(sub, "eval", cmd_eval, "evaluate a checkpoint on a fixed set of test tasks",
                 shared=["--device", "--json", "--threads", "--no-progress", "--inner-steps", "--inner-lr", "--shift"])
    s.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", nargs="+",
                   help="a run folder, checkpoint or shipped model's name; several: an ensemble, scored on the "
                        "first's tasks and shifts, each adapting its own way, each query's log-probabilities averaged")
    s.add_argument("--tasks", type=int, help="number of tasks (default: the preset's eval_tasks, 600)")
    s.add_argument("--classes", default="test", metavar="test|val|train",
                   help="draw the tasks from the dataset's test classes (default), its val or its train classes")
    _shared(s, "--data", " (default: the one the run was trained on)")
    s.add_argument("--any-kind", action="store_true",
                   help="with --data: also data of another kind than the run's (e.g. your folder for an Omniglot run)")
    _shared(s, "--seed", ": the task set (default: the preset's eval_seed)")
    s.add_argument("--scores", metavar="FILE", help="also write each task's score, one per line")
    s.add_argument("--at-steps", metavar="N,N,...", help="also report after these inner-step counts, e.g. 0,1,10")
    s.add_argument("--steps", action=Moved, now="--inner-steps")
    s.add_argument("--split", action=Moved, now="--classes (test, val or train)")
    s.add_argument("--lake", metavar="PATH", help="score Lake et al.'s 20 published within-alphabet 20-way one-shot "
                   "runs instead: all_runs.zip of brendenlake/omniglot (python/one-shot-classification/) or the "
                   "folder it unzips to; error per run and overall, each trial classified on its own, beside the "
                   "published figures (people 4.5%%, BPL 3.3%%, siamese 8%%, deep ConvNet 13.5%%)")

    s = _command(sub, "plot", cmd_plot, "draw a run's learning curves to a PNG, or several runs' validation curves "
                 "on one")
    s.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="a run folder or a shipped model's name; "
                   "several: their validation curves together")
    _shared(s, "--out", ": the PNG (default RUN_DIR/curves.png, or adaptation.png; for several runs curves.png "
            "here)")
    s.add_argument("--adaptation", action="store_true",
                   help="regression: the true curve, the K points, and predictions before and after adapting")

    s = _command(sub, "predict", cmd_predict, "adapt a checkpoint to a labelled support set and classify new images",
                 shared=["--threads", "--device", "--inner-steps", "--inner-lr", "--shift"])
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder or .pt file")
    s.add_argument("--support", required=True, metavar="SUPPORT_DIR", help="<class>/<image> folders")
    s.add_argument("--query", required=True, nargs="+", metavar="QUERY", help="image files or folders")
    s.add_argument("--top-k", type=int, default=1, help="also show the K most likely classes")
    s.add_argument("--transductive", action="store_true",
                   help="normalize all query images of this call together, as `fewshot eval` does at meta-test "
                        "(more accurate on a task's queries, but each answer then depends on the other images); "
                        "default: each image on its own, normalized with the support set")
    output = s.add_mutually_exclusive_group()
    _shared(output, "--json")
    output.add_argument("--csv", metavar="FILE", help="also write the predictions to a CSV file")
    s.add_argument("--steps", action=Moved, now="--inner-steps")

    s = _command(sub, "models", cmd_models, "list the trained models shipped with fewshot, with their cards; "
                 "a model's name works wherever a run folder does", shared=["--json"])
    s.add_argument("name", nargs="?", help="show this model's card only")
    return p


# why an OS error happened, and what to do about it
OS_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or choose a folder on another disk, then run again",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder, then run again",
    errno.EROFS: "the file system is read-only: choose a folder you can write",
    errno.EACCES: "permission denied: choose a path you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you can write, or fix its permissions",
    errno.EISDIR: "it is a folder where a file belongs: give a file path",
    errno.ENOTDIR: "a part of it is a file where a folder belongs: give another path",
    errno.ENOENT: "it does not exist: check the path",
    errno.EEXIST: "it already exists: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "it is a loop of symbolic links: give another path",
    errno.EIO: "the device reported an input/output error: check the disk, or choose another folder",
}


def os_error_line(error: OSError) -> str:
    """One line for an OS error: the path, what the system said, and a fix."""
    path = error.filename if error.filename is not None else error.filename2
    where = f"{os.fsdecode(path)}: " if path is not None else ""
    fix = OS_FIXES.get(error.errno, "check the path and the disk, then run again")
    return f"{where}{error.strerror or type(error).__name__}; {fix}"


def _where(args):
    """The folder a command writes into, to name in an OS error that carries no file name
    (a write to an open file that fails on a full disk)."""
    for name in ("resume", "out"):
        if getattr(args, name, None):
            return getattr(args, name)
    if getattr(args, "command", None) == "data":
        root = args.root or os.environ.get("FEWSHOT_HOME", str(Path("~/.cache/fewshot")))
        return str(Path(root).expanduser() / (args.name or args.dataset))
    return None


class Terminated(BaseException):
    """SIGTERM outside the places that save first (train and embed install their own handlers)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if hasattr(args, "no_progress") and not sys.stderr.isatty():
        args.no_progress = True  # progress bars only on a terminal: a log file gets lines, not `\r` frames
    # SIGTERM ends a command as Ctrl-C does: cleanly (atomic writes clean up) and with status 143; a
    # late second SIGTERM after train() saved and handed its handler back lands here too, and changes nothing
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return _run(args)
    except Terminated:
        print("fewshot: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args):
    try:
        try:
            code = args.run(args)
        except OSError as error:
            if error.filename is None and error.filename2 is None and _where(args) and \
                    not isinstance(error, BrokenPipeError):
                raise OSError(error.errno, error.strerror, f"writing in {_where(args)}") from None
            raise
    except FewshotError as error:
        print(f"fewshot: error: {_shown(' '.join(str(error).split()))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fewshot presets | head -1`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush stays quiet
        return 0
    except OSError as error:  # full disk, read-only file system, a folder where a file belongs...
        print(f"fewshot: error: {_shown(os_error_line(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewshot: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
