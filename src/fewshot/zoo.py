"""Trained models shipped with fewshot, by name.

The package folder `pretrained/` holds, per model NAME, its weights `NAME.pt` and its
card `NAME.yaml` (a `Card`: preset, data and split, steps run and the paper's, training
time and machine, test score +- 95% interval on the preset's fixed test tasks, the
paper's figure and source, the weights' sha256, and the commands that trained and
evaluated it). A name works wherever a run folder does (`fewshot eval NAME`, `fewshot
predict NAME`, `fewshot train PRESET --init NAME`, `fewshot.load(NAME)`):
`checkpoint.find` resolves it here, once the file matches its card's sha256.

A weights file is a fewshot checkpoint without the meta-training state: the config, the
algorithm's state (network weights, batch-norm statistics, learned inner rates, and
Reptile's inner Adam moments, which its adaptation reads), the step and the input
preprocessing, and for a model of embeddings (LEO) the image backbone that made them
(inputs.py), so that it reads images; no meta-optimizer, schedule, RNG state or path of
the training machine.

`FEWSHOT_PRETRAINED=DIR` reads and writes another folder instead (tests, a private
collection). `ship()` (scripts/ship_model.py) turns a trained run into a shipped model.
"""
import hashlib
import io
import os
import re
import shlex
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import FewshotError
from .reading import read_yaml

if TYPE_CHECKING:
    from .config import Config

FOLDER_VARIABLE = "FEWSHOT_PRETRAINED"
PACKAGE_FOLDER = Path(__file__).resolve().parent / "pretrained"
# everything shipped together stays under this; a model too big says why it earns its size
TOTAL_LIMIT_BYTES = 20_000_000
# a name is never a path: no separator, no dot (so `x.pt` or `runs/x` is always a file or folder)
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# what a shipped model may be evaluated with other than its run: one run, several cells
# (ProtoNets train 60-way and are tested 5- and 20-way); never the number or seed of the tasks
EVALUATION_KEYS = ("eval_ways", "eval_query", "eval_inner_steps", "eval_inner_lr", "eval_inner_batch")
TABLE_START = "<!-- shipped-models table: generated from the cards by `python scripts/results_table.py --shipped " \
              "--write docs/results.md`; do not edit by hand -->"
TABLE_END = "<!-- end of the shipped-models table -->"


@dataclass(frozen=True)
class Card:
    """What a shipped model is and how it was made; one YAML file per model."""
    name: str
    preset: str  # the preset it was trained from (`fewshot presets`)
    description: str  # the preset's description
    algorithm: str
    data: str | None  # the `data` it was trained and tested on: a name under FEWSHOT_HOME or a relative path
    split: str
    steps: int  # meta-steps of the weights shipped
    run_steps: int  # meta-steps the run had made when it was shipped (its best.pt may be earlier)
    paper_steps: int  # the preset's `steps`: the paper's schedule
    training_seconds: float  # wall clock up to `steps`, summed over the processes (resumes) of the run
    training_processes: int
    machine: str
    evaluation_changes: list[str]  # KEY=VALUE of the evaluation settings changed from the run's (ship --set)
    metric: str  # accuracy or mse
    test_ways: int  # the test tasks: ways (1 for regression) and shots
    test_shots: int
    test_mean: float
    test_ci95: float  # 95% half-width, 1.96 std / sqrt(tasks)
    test_tasks: int
    test_seed: int
    test_inner_steps: int
    test_device: str
    paper_figure: str
    paper_source: str
    weights: str  # file name beside the card
    weights_bytes: int
    sha256: str
    train_commands: list[str]
    eval_command: str
    ship_command: str
    notes: str  # why a cell differs from its paper (steps short of the schedule, ...), or ""
    backbone: str  # a model of embeddings (LEO): the image backbone its weights file carries; else ""
    shipped: str  # date, YYYY-MM-DD
    fewshot_version: str
    torch_version: str
    validation_curve: list[list[float]]  # [step, training seconds, validation metric] per validation

    def to_dict(self) -> dict:
        return asdict(self)


CARD_FIELDS = {f.name: f.type for f in fields(Card)}


def folder() -> Path:
    """Where the shipped models are: $FEWSHOT_PRETRAINED, else the package's `pretrained/`."""
    chosen = os.environ.get(FOLDER_VARIABLE)
    return Path(chosen).expanduser() if chosen else PACKAGE_FOLDER


def _fits(value: Any, kind: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind == str | None:
        return value is None or isinstance(value, str)
    if kind == list[str]:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == list[list[float]]:
        return isinstance(value, list) and all(isinstance(row, list) and all(_fits(v, float) for v in row)
                                               for row in value)
    raise TypeError(f"no check for card fields of type {kind}")


def read_card(path: Path) -> Card:
    """A card file, checked: every field present, of its type, and nothing else."""
    fix = "reinstall fewshot (pip install --force-reinstall fewshot) or ship the model again"
    values = read_yaml(path, "the shipped model's card", fix)  # the one reader: bombs, unreadable bytes, 1e-4
    if not isinstance(values, dict):
        raise FewshotError(f"the card {path} of a shipped model is not a mapping of fields; {fix}")
    missing = sorted(set(CARD_FIELDS) - set(values))
    unknown = sorted(set(values) - set(CARD_FIELDS))
    wrong = [name for name, kind in CARD_FIELDS.items() if name in values and not _fits(values[name], kind)]
    if missing or unknown or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
                   ([f"unknown {', '.join(unknown)}"] if unknown else []) + \
                   ([f"wrong type: {', '.join(wrong)}"] if wrong else [])
        raise FewshotError(f"the card {path} of a shipped model is damaged ({'; '.join(problems)}); {fix}")
    values = {name: float(v) if CARD_FIELDS[name] is float else v for name, v in values.items()}
    if values["name"] != path.stem or values["weights"] != f"{path.stem}.pt":
        raise FewshotError(f"the card {path} names model {values['name']!r} with weights {values['weights']!r}, "
                           f"not {path.stem!r} and {path.stem}.pt; {fix}")
    return Card(**values)


def card_text(card: Card) -> str:
    header = (f"# {card.name}: a trained model shipped with fewshot. Written by scripts/ship_model.py;\n"
              f"# `fewshot eval {card.name}` reproduces test_mean and test_ci95 exactly.\n")
    return header + yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True, width=120)


def cards(where: Path | None = None) -> list[Card]:
    """Every shipped model's card, by name."""
    where = folder() if where is None else Path(where)
    if not where.is_dir():
        return []
    return [read_card(path) for path in sorted(where.glob("*.yaml")) if NAME.fullmatch(path.stem)]


def card(name: str, where: Path | None = None) -> Card:
    """The card of model `name` (a FewshotError naming the shipped ones when there is none)."""
    where = folder() if where is None else Path(where)
    path = where / f"{name}.yaml"
    if not NAME.fullmatch(name) or not path.is_file():
        shipped = [c.name for c in cards(where)]
        known = f"the shipped ones are {', '.join(shipped)}" if shipped else "none is shipped yet"
        raise FewshotError(f"no shipped model is named {name!r}; {known} (`fewshot models`)")
    return read_card(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_problem(card: Card, where: Path | None = None) -> str | None:
    """Why model `card`'s weights file cannot be used (missing, or not the file its card
    describes), else None."""
    path = (folder() if where is None else Path(where)) / card.weights
    if not path.is_file():
        return f"its weights file {path} is missing"
    if sha256(path) != card.sha256:
        return (f"its weights file {path} is not the file its card describes (sha256 differs): it is damaged "
                f"or was altered")
    return None


def weights_file(target: str, where: Path | None = None) -> Path | None:
    """The weights file of the shipped model named `target`, checked against its card's
    sha256 before anything reads it; None when no shipped model has that name."""
    where = folder() if where is None else Path(where)
    if not NAME.fullmatch(target) or not (where / f"{target}.yaml").is_file():
        return None
    found = read_card(where / f"{target}.yaml")
    problem = weights_problem(found, where)
    if problem:
        raise FewshotError(f"shipped model {target}: {problem}; reinstall fewshot (pip install "
                           f"--force-reinstall fewshot) to restore it")
    return where / found.weights


def folder_bytes(where: Path | None = None) -> int:
    """The size of everything in the folder (cards and weights)."""
    where = folder() if where is None else Path(where)
    return sum(p.stat().st_size for p in where.rglob("*") if p.is_file()) if where.is_dir() else 0


# ---- shipping a run ------------------------------------------------------------------------------------------

def ship(run: str | Path, name: str, *, data: str | None = None, paper_figure: str | None = None,
         paper_source: str | None = None, machine: str | None = None, train_commands: list[str] | None = None,
         evaluation: dict | None = None, notes: str = "", ship_command: str | None = None, force: bool = False,
         keep_test: bool = False, where: Path | None = None, progress: bool = True) -> Card:
    """Make run `run` (its best.pt, else last.pt; or a .pt file) shipped model `name`: the
    weights without the meta-training state, evaluated on the preset's fixed test tasks
    exactly as `fewshot eval NAME` will, then written atomically with their card.

    `data`: the dataset the model names (default: the run's `data`; a name under
    FEWSHOT_HOME or a relative path, never an absolute path of this machine).
    `paper_figure`, `paper_source`: default from the preset's description ("...(Finn et
    al. 2017); paper 98.7 +- 0.4%"). `evaluation`: settings of EVALUATION_KEYS the model
    is tested with instead of the run's (e.g. {"eval_ways": 20}). `train_commands`: the
    commands that trained the run (default: one rebuilt from its config.yaml, which trains
    the same config, and a `--resume` line when the run took several processes)."""
    import torch

    from . import checkpoint
    from .config import load_preset
    from .evaluate import evaluate_checkpoint
    from .files import atomic_path, write_text
    from .inputs import backbone_of, describe_backbone, trained_on_embeddings
    from .runs import read_metrics
    where = folder() if where is None else Path(where)
    if not NAME.fullmatch(name):
        raise FewshotError(f"model name {name!r} is not a plain name; use lowercase letters, digits, - and _ "
                           f"(e.g. maml-omniglot-5w1s), at most 64 characters")
    card_file = where / f"{name}.yaml"
    if keep_test and not card_file.exists():
        raise FewshotError(f"no model named {name} is shipped in {where}, so there is no test figure to keep; "
                           f"ship it without --keep-test")
    if card_file.exists() and not (force or keep_test):
        raise FewshotError(f"a model named {name} is already shipped in {where}; choose another name, or "
                           f"replace it with --force")
    source = checkpoint.find(run)
    state = checkpoint.load(source, run=True)
    config = state["config"]
    try:
        preset = load_preset(config.preset or "")
    except FewshotError:
        raise FewshotError(f"{source} was trained from {config.preset!r}, not one of fewshot's presets; a shipped "
                           f"model names the preset (and paper) it reproduces") from None
    spec = config.data if data is None else data
    if spec is not None and Path(spec).expanduser().is_absolute():
        raise FewshotError(f"the model's data would be {spec}, a path of this machine; give --data as a dataset "
                           f"name under FEWSHOT_HOME or a path relative to where fewshot eval runs "
                           f"(e.g. ../shared/data/omniglot-28)")
    figure, cited = _paper(preset.description)
    figure, cited = paper_figure or figure, paper_source or cited
    if not figure or not cited:
        raise FewshotError(f"the description of preset {config.preset} ({preset.description!r}) names no "
                           f"{'paper figure' if not figure else 'source'}; give --paper and --source")
    evaluation = dict(evaluation or {})
    other = sorted(set(evaluation) - set(EVALUATION_KEYS))
    if other:
        raise FewshotError(f"a shipped model may change only how it is evaluated ({', '.join(EVALUATION_KEYS)}), "
                           f"not {', '.join(other)}; train a run with that setting instead")
    trained_config = config.unchecked_replace(data=spec)
    # init: the weights already hold it, and its path is of the machine that trained
    shipped_config = trained_config.replace(init=None, **evaluation)
    buffer = io.BytesIO()
    # a model of embeddings carries the backbone that made them, so that it reads images (inputs.py)
    backbone = backbone_of(state) if trained_on_embeddings(state) else None
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": shipped_config.to_dict(),
                "algorithm": state["algorithm"], "step": state["step"],
                "preprocessing": state.get("preprocessing"), **({"backbone": backbone} if backbone else {})}, buffer)
    weights = buffer.getvalue()
    replaced = sum((where / n).stat().st_size for n in (f"{name}.pt", f"{name}.yaml") if (where / n).is_file())
    if folder_bytes(where) - replaced + len(weights) > TOTAL_LIMIT_BYTES:
        raise FewshotError(f"{name}'s weights ({len(weights) / 1e6:.1f} MB) would take the shipped models past "
                           f"{TOTAL_LIMIT_BYTES / 1e6:.0f} MB in all ({folder_bytes(where) / 1e6:.1f} MB now); "
                           f"ship a smaller network, or say why this one earns its size")
    digest = hashlib.sha256(weights).hexdigest()
    command = ship_command or shlex.join(["python", "scripts/ship_model.py", relative_path(run), name])
    if keep_test:
        shipped = read_card(card_file)
        result = _kept_test(shipped, digest, source)
        # the figures are still those of the command that measured them: the card names it first
        command = f"{shipped.ship_command}; card rewritten, its test figures kept: {command}"
    else:
        with tempfile.TemporaryDirectory() as scratch:  # evaluated as the very bytes that will be shipped
            scratch_file = Path(scratch) / f"{name}.pt"
            scratch_file.write_bytes(weights)
            result = evaluate_checkpoint(scratch_file, device="cpu", progress=progress)
    run_folder = source.parent
    rows = read_metrics(run_folder)
    seconds, processes, curve = training_time(rows, state["step"])
    last = run_folder / "last.pt"
    run_steps = checkpoint.load(last)["step"] if last.is_file() and last != source else state["step"]
    made = Card(
        name=name, preset=config.preset, description=preset.description, algorithm=config.algorithm, data=spec,
        split=config.split, steps=state["step"], run_steps=run_steps, paper_steps=preset.steps,
        training_seconds=round(seconds, 1), training_processes=processes, machine=machine or this_machine(),
        evaluation_changes=[f"{key}={_yaml_value(value)}" for key, value in evaluation.items()],
        metric=result["metric"], test_ways=result["ways"], test_shots=result["shots"], test_mean=result["mean"],
        test_ci95=result["ci95"], test_tasks=result["tasks"],
        test_seed=result["seed"], test_inner_steps=result["inner_steps"], test_device="cpu",
        paper_figure=figure, paper_source=cited, weights=f"{name}.pt", weights_bytes=len(weights),
        sha256=digest,
        train_commands=train_commands or rebuilt_commands(trained_config, config.init, run_folder, processes),
        eval_command=f"fewshot eval {name} --device cpu",
        ship_command=command,
        notes=notes, backbone=describe_backbone(backbone) if backbone else "", shipped=date.today().isoformat(),
        fewshot_version=_version(), torch_version=str(torch.__version__),
        validation_curve=curve)
    with atomic_path(where / made.weights) as tmp:
        Path(tmp).write_bytes(weights)
    write_text(card_file, card_text(made))  # the card last: a model exists once its card does
    return made


def _kept_test(shipped: Card, digest: str, source: Path) -> dict:
    """The test figures of card `shipped`, in evaluate_checkpoint's keys, when its weights
    are exactly those now shipped (sha256 `digest`, made from checkpoint `source`)."""
    if shipped.sha256 != digest:
        raise FewshotError(f"the weights made from {source} differ from those shipped as {shipped.name} (sha256 "
                           f"{digest[:12]}... against {shipped.sha256[:12]}...), so its test figures do not hold "
                           f"for them; evaluate them anew with --force instead of --keep-test")
    return {"metric": shipped.metric, "ways": shipped.test_ways, "shots": shipped.test_shots,
            "mean": shipped.test_mean, "ci95": shipped.test_ci95, "tasks": shipped.test_tasks,
            "seed": shipped.test_seed, "inner_steps": shipped.test_inner_steps}


def _version() -> str:
    from . import __version__
    return __version__


def _paper(description: str) -> tuple[str | None, str | None]:
    """(figure, source) from a preset description such as
    "MAML, Omniglot 5-way 1-shot (Finn et al. 2017); paper 98.7 +- 0.4%"."""
    figure = re.search(r"paper (\d[^;]*)$", description)
    source = re.search(r"\(([^()]*\d{4}[^()]*)\)", description)
    return (figure.group(1).strip() if figure else None), (source.group(1) if source else None)


def training_time(rows: list[dict], until_step: int) -> tuple[float, int, list[list[float]]]:
    """(seconds and processes up to `until_step`, the whole run's validation curve) of a
    run's metrics rows (runs.cumulative_seconds). The curve goes on past `until_step`: a
    best checkpoint before the end shows where it stood."""
    from .runs import cumulative_seconds
    timed = cumulative_seconds(rows)
    until = [(seconds, processes) for row, seconds, processes in timed if row["step"] <= until_step]
    seconds, processes = until[-1] if until else (0.0, 1)
    curve = [[row["step"], round(seconds_then, 1), row["val_metric"]] for row, seconds_then, _ in timed
             if isinstance(row.get("val_metric"), (int, float))]
    return seconds, processes, curve


def rebuilt_commands(config: "Config", init: str | None, run_folder: Path, processes: int) -> list[str]:
    """A `fewshot train` command that trains exactly `config` (the preset, then every key
    that differs from it), and the resume that continued it when it took several processes."""
    from .config import DEFAULTS, load_preset
    preset = load_preset(config.preset)
    out = relative_path(run_folder)
    parts = ["fewshot", "train", config.preset]
    if config.data is not None:
        parts += ["--data", config.data]
    parts += ["--out", out]
    for key in DEFAULTS:
        if key not in ("data", "init") and getattr(config, key) != getattr(preset, key):
            parts += ["--set", f"{key}={_yaml_value(getattr(config, key))}"]
    if init:
        parts += ["--init", relative_path(init)]
    commands = [shlex.join(parts)]
    if processes > 1:
        commands.append(f"fewshot train --resume {shlex.quote(out)}  # continued in {processes - 1} more "
                        f"process{'es' if processes > 2 else ''}")
    return commands


def _yaml_value(value: Any) -> str:
    """`value` as --set reads it back (YAML)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def relative_path(path: str | Path) -> str:
    """A path as given, or relative to the working folder if absolute: cards name no paths of this machine."""
    path = Path(path)
    return os.path.relpath(path) if path.is_absolute() else str(path)


def this_machine() -> str:
    """The CPU this process runs on, in words (ship's default `machine`)."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core CPU" + (f" ({model})" if model else "")


# ---- showing them --------------------------------------------------------------------------------------------

def score_text(metric: str, mean: float, ci95: float) -> str:
    if metric == "accuracy":
        return f"{100 * mean:.2f}% +- {100 * ci95:.2f}%"
    return f"{metric} {mean:.4f} +- {ci95:.4f}"


def result_text(card: Card) -> str:
    """The card's test figure, named: "test accuracy 98.07% +- 0.52%", "test mse 0.1049 +- 0.0112"."""
    return f"test {'accuracy ' if card.metric == 'accuracy' else ''}" \
           f"{score_text(card.metric, card.test_mean, card.test_ci95)}"


def steps_text(card: Card) -> str:
    """The meta-steps of the weights, and of the run where its best checkpoint came earlier."""
    if card.run_steps == card.steps:
        return f"{card.steps} meta-steps"
    return f"meta-step {card.steps} (the best by validation of a {card.run_steps}-step run)"


def task_text(card: Card) -> str:
    return f"{card.test_ways}-way {card.test_shots}-shot" if card.metric == "accuracy" else f"{card.test_shots}-shot"


def card_lines(card: Card, where: Path | None = None) -> list[str]:
    """`fewshot models`: one model's card in a few lines."""
    hours = card.training_seconds / 3600
    problem = weights_problem(card, where)
    lines = [f"{card.name}: {card.description} [preset {card.preset}]",
             f"  {result_text(card)} (95% interval, "
             f"{card.test_tasks} fixed {task_text(card)} test tasks, seed {card.test_seed}, "
             f"{card.test_inner_steps} inner steps, {card.test_device})",
             f"  paper {card.paper_figure} ({card.paper_source})",
             f"  {steps_text(card)} of the paper's {card.paper_steps}; {hours:.2f} h of training in "
             f"{card.training_processes} process{'es' if card.training_processes > 1 else ''} on {card.machine}",
             f"  data {card.data if card.data is not None else '(generated)'}, split {card.split}"
             + (f"; tested with {', '.join(card.evaluation_changes)} (the run: its preset's)"
                if card.evaluation_changes else ""),
             f"  weights {card.weights}, {card.weights_bytes / 1e6:.2f} MB, sha256 {card.sha256}"
             + (f": DAMAGED, {problem}" if problem else ""),
             *[f"  trained with: {command}" for command in card.train_commands],
             f"  reproduce: {card.eval_command}"]
    if card.backbone:
        lines.append(f"  backbone: {card.backbone}")
    if card.notes:
        lines.append(f"  note: {card.notes}")
    return lines


def listing(where: Path | None = None) -> list[str]:
    """`fewshot models`: every shipped model's card, or a line saying there is none."""
    found = cards(where)
    if not found:
        return [f"no trained model is shipped with fewshot {_version()} yet; train one with `fewshot train PRESET "
                f"--data DATA --out RUN_DIR` and use the run folder wherever a model name goes"]
    lines = []
    for shipped in found:
        lines += card_lines(shipped, where) + [""]
    return lines[:-1]


TABLE_HEADER = ["| model | preset | test tasks | paper (figure, source) | ours, test (95% interval, tasks) | "
                "meta-steps ours / paper | hours | machine | notes | curve |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
CURVES = "img/models"  # beside the document: each model's validation curve (plot.plot_card), NAME.png


def results_table(found: list[Card]) -> str:
    """The markdown table of shipped models that docs/results.md shows, made from their cards."""
    rows = [f"| `{c.name}` | `{c.preset}` | {task_text(c)}"
            f"{''.join(f', {change}' for change in c.evaluation_changes)} | {c.paper_figure} ({c.paper_source}) | "
            f"{score_text(c.metric, c.test_mean, c.test_ci95)} ({c.test_tasks}) | {c.steps}"
            f"{f' (best of {c.run_steps})' if c.run_steps != c.steps else ''} / {c.paper_steps} | "
            f"{c.training_seconds / 3600:.2f} | {c.machine} | {c.notes or '-'} | [curve]({CURVES}/{c.name}.png) |"
            for c in found]
    if not rows:
        rows = ["| no model shipped yet | - | - | - | - | - | - | - | - | - |"]
    return "\n".join(TABLE_HEADER + rows)


def table_in(text: str) -> str:
    """The table between the markers of a document."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise FewshotError("the document holds no shipped-models table markers; add the two lines "
                           f"{TABLE_START!r} and {TABLE_END!r} where the table goes")
    return text[start + len(TABLE_START):end].strip("\n")


def with_table(text: str, table: str) -> str:
    """`text` with the table between its markers replaced by `table`."""
    table_in(text)  # the markers are there
    start, end = text.find(TABLE_START) + len(TABLE_START), text.find(TABLE_END)
    return f"{text[:start]}\n{table}\n{text[end:]}"


__all__ = ["Card", "card", "cards", "folder", "listing", "results_table", "ship", "weights_file"]
