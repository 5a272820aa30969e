"""Learning curves from a run's metrics.jsonl."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import FewshotError  # noqa: E402
from .io import atomic_path  # noqa: E402
from .train import read_metrics  # noqa: E402


def plot_run(run, out=None):
    """Write the run's curves (meta-loss, train and validation metric) to a PNG; return its path."""
    run = Path(run)
    rows = read_metrics(run)
    if not rows:
        raise FewshotError(f"{run} has no metrics.jsonl rows yet; train into it with `fewshot train`")
    out = Path(out) if out else run / "curves.png"
    steps = [r["step"] for r in rows]
    val = [(r["step"], r["val_metric"], r["val_ci95"]) for r in rows if "val_metric" in r]
    figure, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, [r["loss"] for r in rows], label="meta-train query loss")
    ax_loss.set_xlabel("meta-step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_metric.plot(steps, [r["metric"] for r in rows], label="meta-train (query, after adaptation)")
    if val:
        vs, vm, vc = zip(*val)
        ax_metric.errorbar(vs, vm, yerr=vc, marker="o", ms=3, capsize=2, label="validation (95% CI)")
    ax_metric.set_xlabel("meta-step")
    ax_metric.set_ylabel("accuracy")
    ax_metric.legend()
    figure.suptitle(run.name)
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return out
