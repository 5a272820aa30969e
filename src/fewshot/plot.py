"""Learning curves from a run's metrics.jsonl."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from .data import sinusoid  # noqa: E402
from .errors import FewshotError  # noqa: E402
from .tasks import family  # noqa: E402
from .io import atomic_path  # noqa: E402
from .train import read_metrics  # noqa: E402


def plot_run(run, out=None):
    """Write the run's curves (meta-loss, train and validation metric) to a PNG; return its path."""
    run = Path(run)
    rows = read_metrics(run)
    if not rows:
        raise FewshotError(f"{run} has no metrics.jsonl rows yet; train into it with `fewshot train`")
    out = Path(out) if out else run / "curves.png"
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    metric = family(config).metric_name if config else "metric"
    steps = [r["step"] for r in rows]
    val = [(r["step"], r["val_metric"], r["val_ci95"]) for r in rows if "val_metric" in r]
    figure, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, [r["loss"] for r in rows], label="meta-train query loss")
    ax_loss.set_xlabel("meta-step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_metric.plot(steps, [r["metric"] for r in rows], label="meta-train (query, after adaptation)")
    if not family(config).higher_is_better if config else False:
        ax_metric.set_yscale("log")
    if val:
        vs, vm, vc = zip(*val)
        ax_metric.errorbar(vs, vm, yerr=vc, marker="o", ms=3, capsize=2, label="validation (95% CI)")
    ax_metric.set_xlabel("meta-step")
    ax_metric.set_ylabel(metric)
    ax_metric.legend()
    figure.suptitle(f"{run.name} ({config['preset']})" if config.get("preset") else run.name)
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return out


def plot_adaptation(run, out=None, steps=(1, 10), seed=None):
    """The MAML paper's Figure 2 for a regression run: the true curve of one seeded
    test task, its K support points, and the prediction before and after adapting."""
    from .predict import load
    learner = load(run)
    config = learner.config
    if config["dataset"] != "sinusoid":
        raise FewshotError(f"--adaptation draws regression tasks; {run} was trained on {config['dataset']}")
    task = sinusoid.SinusoidSampler(config["shots"], config["query"],
                                    config["eval_seed"] if seed is None else seed).batch(0, 1)[0]
    grid = torch.linspace(*sinusoid.X_RANGE, 200)[:, None]
    figure, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid[:, 0], sinusoid.curve(task.amplitude, task.phase, grid[:, 0]), "r", lw=2, label="ground truth")
    ax.plot(task.support_x[:, 0], task.support_y[:, 0], "^", color="purple", ms=9,
            label=f"{config['shots']} points used for the gradient")
    styles = [":", "--", "-", "-."]
    for style, count in zip(styles, (0, *steps)):
        prediction = learner.adapt(task.support_x, task.support_y, steps=count).predict(grid)
        label = "pre-update" if count == 0 else f"after {count} step{'s' if count > 1 else ''}"
        ax.plot(grid[:, 0], prediction[:, 0].numpy(), style, color="seagreen", alpha=0.5 + 0.5 * count / max(steps),
                label=f"MAML, {label}")
    ax.set_xlim(*sinusoid.X_RANGE)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{config.get('preset', '')}: amplitude {task.amplitude:.2f}, phase {task.phase:.2f}, "
                 f"step {learner.step}", fontsize=10)
    figure.tight_layout()
    out = Path(out) if out else Path(run) / "adaptation.png"
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return out
