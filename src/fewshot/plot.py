"""Learning curves from a run's metrics.jsonl."""
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import torch  # noqa: E402

from . import data  # noqa: E402
from .config import Config, eval_query  # noqa: E402
from .data import sinusoid  # noqa: E402
from .errors import FewshotError  # noqa: E402
from .tasks import family  # noqa: E402
from .files import write_bytes  # noqa: E402
from .runs import cumulative_seconds, read_config, read_metrics, torn_warning  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .zoo import Card


ALGORITHM_NAMES = {"maml": "MAML", "anil": "ANIL", "metasgd": "Meta-SGD", "mamlpp": "MAML++", "reptile": "Reptile",
                   "protonet": "ProtoNets", "leo": "LEO"}


def algorithm_name(config: Config) -> str:
    """The run's algorithm as the papers name it ("FOMAML" for first-order MAML)."""
    name = config.algorithm
    if name == "maml" and config.first_order:
        return "FOMAML"
    return ALGORITHM_NAMES.get(name, name)


def after_steps(config: Config, training: bool) -> str:
    """When a curve's figure is taken: after `inner_steps` inner steps at meta-train,
    `eval_inner_steps` at validation (algorithms with a gradient inner loop)."""
    if config.algorithm not in ("maml", "anil", "metasgd", "mamlpp", "reptile"):
        return "after adaptation"
    count = config.inner_steps if training else config.eval_inner_steps
    return f"after {count} inner step{'s' if count != 1 else ''}"


def png_bytes(figure: "Figure") -> bytes:
    """The figure as PNG bytes: written in one stream, a named pipe or a device takes them too
    (Pillow's own writer seeks)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def save(figure: "Figure", out: str | Path) -> Path:
    """Write `figure` as a PNG at `out` and close it."""
    out = Path(out)
    write_bytes(out, png_bytes(figure))
    plt.close(figure)
    return out


def validation_axes(hours_label: str = "hours of training") -> tuple["Figure", Any]:
    """A figure of two panels sharing the validation axis: against meta-steps, and against
    hours of training."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    axes[0].set_xlabel("meta-step")
    axes[1].set_xlabel(hours_label)
    return figure, axes


def shipped_name(run: str | Path) -> str | None:
    """`run` when it names a shipped model and no folder of that name is here, else None."""
    from . import zoo
    return str(run) if not Path(run).exists() and zoo.weights_file(str(run)) is not None else None


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's curves (meta-loss, train and validation metric) to a PNG; return its path.
    A shipped model's name draws its card's validation curve (`plot_card`)."""
    if shipped_name(run):
        from . import zoo
        return plot_card(zoo.card(str(run)), out or f"{run}-curves.png")
    run = Path(run)
    torn = []
    rows = read_metrics(run, torn)
    if not rows and torn:
        raise FewshotError(f"{run / 'metrics.jsonl'} holds no metrics row ({len(torn)} lines are torn or not "
                           f"rows fewshot writes); train into {run} with `fewshot train`, or restore the file")
    if not rows:
        raise FewshotError(f"{run} has no metrics.jsonl rows yet; train into it with `fewshot train`")
    for number in torn:
        print(torn_warning(run / "metrics.jsonl", number), file=sys.stderr)
    out = Path(out) if out else run / "curves.png"
    # the curves of a folder without its config.yaml still draw, with plainer labels
    config = read_config(run) if (run / "config.yaml").exists() else None
    pretraining = config is None and (run / "pretrain.pt").exists()  # `fewshot embed`'s folder
    metric = family(config).metric_name if config else "accuracy" if pretraining else "metric"
    step_label = "pretraining step" if pretraining else "meta-step"
    steps = [r["step"] for r in rows]
    val = [(r["step"], r["val_metric"], r["val_ci95"]) for r in rows if "val_metric" in r]
    figure, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, [r.get("loss", math.nan) for r in rows],
                 label="pretraining batch loss" if pretraining else "meta-train query loss")
    ax_loss.set_xlabel(step_label)
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    train_label = (f"meta-train query, {after_steps(config, True)}" if config else
                   "pretraining batch, every meta-train class" if pretraining else "meta-train query")
    ax_metric.plot(steps, [r.get("metric", math.nan) for r in rows], label=train_label)
    if not family(config).higher_is_better if config else False:
        ax_metric.set_yscale("log")
    if val:
        vs, vm, vc = zip(*val)
        val_label = (f"validation (95% CI), {after_steps(config, False)}" if config else
                     "validation classes, nearest prototype (95% CI)" if pretraining else "validation (95% CI)")
        ax_metric.errorbar(vs, vm, yerr=vc, marker="o", ms=3, capsize=2, label=val_label)
    ax_metric.set_xlabel(step_label)
    ax_metric.set_ylabel(metric)
    ax_metric.legend()
    figure.suptitle(f"{run.name} ({config.preset})" if config and config.preset else run.name)
    figure.tight_layout()
    return save(figure, out)


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
    """Several runs' validation curves (95% intervals) on one figure, against meta-steps and
    against hours of training (every process of each run summed), to a PNG at `out`: the
    runs of a comparison, e.g. one setting against another."""
    curves, metrics = [], set()
    for run in runs:
        run = Path(run)
        timed = cumulative_seconds(read_metrics(run))
        points = [(row["step"], seconds / 3600, row["val_metric"], row.get("val_ci95", 0.0))
                  for row, seconds, _ in timed if isinstance(row.get("val_metric"), (int, float))]
        if not points:
            raise FewshotError(f"{run} has no validation rows in metrics.jsonl yet; compare runs once each has "
                               f"validated (every val_every steps)")
        config = read_config(run) if (run / "config.yaml").exists() else None
        metrics.add(family(config).metric_name if config else "metric")
        curves.append((run.name, points))
    if len(metrics) > 1:
        raise FewshotError(f"these runs measure different things ({', '.join(sorted(metrics))}); compare runs of "
                           f"one kind of task")
    figure, axes = validation_axes()
    for name, points in curves:
        steps, hours, values, intervals = zip(*points)
        for ax, xs in ((axes[0], steps), (axes[1], hours)):
            ax.errorbar(xs, values, yerr=intervals, marker="o", ms=3, capsize=2, label=name)
    axes[0].set_ylabel(f"validation {metrics.pop()} (95% CI)")
    axes[0].legend()
    figure.tight_layout()
    return save(figure, out)


def plot_card(card: "Card", out: str | Path) -> Path:
    """A shipped model's validation curve (its card's), against meta-steps and against hours
    of training, to a PNG at `out`."""
    from .zoo import result_text
    steps, seconds, values = zip(*card.validation_curve) if card.validation_curve else ((), (), ())
    accuracy = card.metric == "accuracy"
    shown = [100 * v for v in values] if accuracy else list(values)
    figure, axes = validation_axes(f"hours of training ({card.machine})")
    for ax, xs in ((axes[0], steps), (axes[1], [t / 3600 for t in seconds])):
        ax.plot(xs, shown, marker="o", ms=3, label="validation")
        ax.grid(alpha=0.3)
    if card.steps in steps:  # the shipped weights
        at = steps.index(card.steps)
        axes[0].plot(steps[at], shown[at], "r*", ms=12, label=f"shipped: meta-step {card.steps}")
        axes[1].plot(seconds[at] / 3600, shown[at], "r*", ms=12)
    axes[0].set_ylabel(f"validation {'accuracy %' if accuracy else card.metric}")
    if not accuracy:
        axes[0].set_yscale("log")
    axes[0].legend()
    figure.suptitle(f"{card.name} ({card.preset}): {result_text(card)}", fontsize=10)
    figure.tight_layout()
    return save(figure, out)


def plot_adaptation(run: str | Path, out: str | Path | None = None, steps: Sequence[int] = (1, 10),
                    seed: int | None = None) -> Path:
    """The MAML paper's Figure 2 for a regression run: the true curve of the first
    task `fewshot eval` draws from the test split (`seed`: another test stream), its K
    support points, and the run's algorithm's prediction before and after adapting."""
    from .predict import load
    learner = load(run)
    config = learner.config
    if config.dataset != "sinusoid":
        raise FewshotError(f"--adaptation draws regression tasks; {run} was trained on {config.dataset}")
    sampler = data.sampler(config, None, None, "test", config.eval_seed if seed is None else seed,
                           query=eval_query(config))
    task = sampler.batch(0, 1)[0]
    grid = torch.linspace(*sinusoid.X_RANGE, 200)[:, None]
    name = algorithm_name(config)
    figure, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid[:, 0], sinusoid.curve(task.amplitude, task.phase, grid[:, 0]), "r", lw=2, label="ground truth")
    ax.plot(task.support_x[:, 0], task.support_y[:, 0], "^", color="purple", ms=9,
            label=f"{config.shots} points used for the gradient")
    styles = [":", "--", "-", "-."]
    for style, count in zip(styles, (0, *steps)):
        prediction = learner.adapt(task.support_x, task.support_y, steps=count).predict(grid)
        label = "pre-update" if count == 0 else f"after {count} step{'s' if count > 1 else ''}"
        ax.plot(grid[:, 0], prediction[:, 0].numpy(), style, color="seagreen", alpha=0.5 + 0.5 * count / max(steps),
                label=f"{name}, {label}")
    ax.set_xlim(*sinusoid.X_RANGE)
    ax.set_xlabel("x")
    ax.set_ylabel("y = amplitude * sin(x - phase)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{config.preset or ''} ({name}), first test task: amplitude {task.amplitude:.2f}, "
                 f"phase {task.phase:.2f}; meta-step {learner.step}", fontsize=10)
    figure.tight_layout()
    # `load` found it: a folder or file here, else a shipped model's name (checked there once)
    return save(figure, out or (Path(run) / "adaptation.png" if Path(run).exists() else f"{run}-adaptation.png"))
