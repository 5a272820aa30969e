"""`fewshot plot`: what the figures say, read from matplotlib's objects (not pixels)."""
import numpy as np
import pytest
from matplotlib import pyplot

from fewshot import data, plot
from fewshot.config import Config, apply_overrides, eval_query, load_preset
from fewshot.data import sinusoid
from fewshot.errors import FewshotError
from fewshot.train import train


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept open for the test to read."""
    kept = []
    monkeypatch.setattr(pyplot, "close", kept.append)
    yield kept
    monkeypatch.undo()
    for figure in kept:
        pyplot.close(figure)


def sine_run(folder, **overrides):
    settings = dict(steps=2, val_every=2, val_tasks=2, save_every=2, log_every=1)
    settings.update(overrides)
    train(apply_overrides(load_preset("sinusoid-10shot"), settings), folder, progress=False)
    return folder


def legend_texts(axes):
    return [text.get_text() for text in axes.get_legend().get_texts()]


@pytest.mark.parametrize("overrides,name", [({}, "MAML"), ({"first_order": True}, "FOMAML"),
                                            ({"algorithm": "reptile", "inner_optimizer": "adam", "inner_lr": 0.001,
                                              "meta_optimizer": "sgd", "meta_lr": 1.0}, "Reptile")])
def test_adaptation_plot_names_the_runs_algorithm_and_has_axis_labels(tmp_path, figures, overrides, name):
    run = sine_run(tmp_path / "run", **overrides)
    out = plot.plot_adaptation(run)
    assert out == run / "adaptation.png" and out.stat().st_size > 0
    (axes,) = figures[0].axes
    labels = legend_texts(axes)
    assert labels == ["ground truth", "10 points used for the gradient", f"{name}, pre-update",
                      f"{name}, after 1 step", f"{name}, after 10 steps"]
    assert axes.get_xlabel() == "x" and axes.get_ylabel() == "y = amplitude * sin(x - phase)"
    assert f"({name})" in axes.get_title()


def test_adaptation_plot_draws_the_first_task_of_the_test_split(tmp_path, figures):
    run = sine_run(tmp_path / "run")
    plot.plot_adaptation(run)
    config = load_preset("sinusoid-10shot")
    # the task `fewshot eval` scores first: the test split's stream, not the bare evaluation seed
    test_task = data.sampler(config, None, None, "test", config.eval_seed, query=eval_query(config)).batch(0, 1)[0]
    bare_seed_task = sinusoid.SinusoidSampler(10, 10, config.eval_seed).batch(0, 1)[0]
    assert (test_task.amplitude, test_task.phase) != (bare_seed_task.amplitude, bare_seed_task.phase)
    (axes,) = figures[0].axes
    truth, points = axes.get_lines()[:2]
    np.testing.assert_allclose(truth.get_ydata(),
                               sinusoid.curve(test_task.amplitude, test_task.phase, truth.get_xdata()), rtol=1e-6)
    np.testing.assert_array_equal(points.get_xdata(), test_task.support_x[:, 0].numpy())
    np.testing.assert_array_equal(points.get_ydata(), test_task.support_y[:, 0].numpy())
    assert f"amplitude {test_task.amplitude:.2f}, phase {test_task.phase:.2f}" in axes.get_title()
    # another seed: another test stream, still the test split's
    plot.plot_adaptation(run, out=tmp_path / "other.png", seed=99)
    other = data.sampler(config, None, None, "test", 99).batch(0, 1)[0]
    np.testing.assert_array_equal(figures[1].axes[0].get_lines()[1].get_xdata(), other.support_x[:, 0].numpy())


def test_learning_curves_say_after_how_many_inner_steps_each_figure_is_taken(tmp_path, figures):
    run = sine_run(tmp_path / "run", inner_steps=1, eval_inner_steps=10)
    assert plot.plot_run(run) == run / "curves.png"
    loss_axes, metric_axes = figures[0].axes
    assert legend_texts(metric_axes) == ["meta-train query, after 1 inner step",
                                         "validation (95% CI), after 10 inner steps"]
    assert metric_axes.get_ylabel() == "mse"
    assert loss_axes.get_xlabel() == metric_axes.get_xlabel() == "meta-step"


def test_a_pretraining_folders_curves_say_pretraining_and_nearest_prototype_validation(tmp_path, figures):
    """`fewshot embed`'s folder (pretrain.pt, no config.yaml): its own words, not meta-training's."""
    from fewshot.runs import MetricsLog
    (tmp_path / "pretrain.pt").write_bytes(b"")
    log = MetricsLog(tmp_path, 0)
    log.write({"step": 100, "loss": 2.0, "metric": 0.3})
    log.write({"step": 200, "loss": 1.5, "metric": 0.4, "val_metric": 0.33, "val_ci95": 0.01})
    plot.plot_run(tmp_path)
    loss_axes, metric_axes = figures[0].axes
    assert legend_texts(loss_axes) == ["pretraining batch loss"]
    assert legend_texts(metric_axes) == ["pretraining batch, every meta-train class",
                                         "validation classes, nearest prototype (95% CI)"]
    assert loss_axes.get_xlabel() == metric_axes.get_xlabel() == "pretraining step"
    assert metric_axes.get_ylabel() == "accuracy"


def test_protonet_curves_say_after_adaptation():
    config = load_preset("protonet-omniglot-5w1s")
    assert plot.after_steps(config, True) == plot.after_steps(config, False) == "after adaptation"
    assert plot.after_steps(load_preset("omniglot-5w1s"), False) == "after 10 inner steps"


def test_adaptation_plot_of_a_classification_run_is_refused(tmp_path, monkeypatch):
    class Learner:
        config = Config(dataset="omniglot")

    import fewshot.predict
    monkeypatch.setattr(fewshot.predict, "load", lambda run: Learner())
    with pytest.raises(FewshotError, match="--adaptation draws regression tasks"):
        plot.plot_adaptation(tmp_path)


def test_several_runs_validation_curves_share_one_figure_by_steps_and_by_hours(tmp_path, figures, capsys,
                                                                              monkeypatch):
    from fewshot.cli import main
    first = sine_run(tmp_path / "first", steps=4, val_every=2)
    second = sine_run(tmp_path / "second", steps=2, val_every=2)
    out = plot.plot_runs([first, second], tmp_path / "both.png")
    assert out == tmp_path / "both.png" and out.stat().st_size > 0
    by_steps, by_hours = figures[0].axes
    assert legend_texts(by_steps) == ["first", "second"]
    assert by_steps.get_xlabel() == "meta-step" and by_hours.get_xlabel() == "hours of training"
    assert by_steps.get_ylabel() == "validation mse (95% CI)"
    drawn = [line for line in by_steps.get_lines() if line.get_marker() == "o"]
    assert [line.get_xdata().tolist() for line in drawn] == [[2, 4], [2]]
    rows = [r for r in plot.read_metrics(first) if "val_metric" in r]
    assert drawn[0].get_ydata().tolist() == [r["val_metric"] for r in rows]
    hours = [line for line in by_hours.get_lines() if line.get_marker() == "o"][0].get_xdata().tolist()
    assert hours == [r["elapsed_s"] / 3600 for r in rows]  # one process: its own clock
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    capsys.readouterr()
    assert main(["plot", str(first), str(second)]) in (0, None)  # default: curves.png here
    assert capsys.readouterr().out.strip() == "wrote curves.png" and (here / "curves.png").is_file()
    assert main(["plot", str(first), str(second), "--adaptation"]) == 2
    assert "--adaptation draws one run" in capsys.readouterr().err


def test_runs_of_different_measures_are_not_drawn_together(tmp_path):
    from fewshot.config import dump
    sine = sine_run(tmp_path / "sine")
    classification = tmp_path / "classification"  # a run's files: a classification config, a validation row
    classification.mkdir()
    (classification / "config.yaml").write_text(dump(load_preset("protonet-omniglot-5w1s")))
    (classification / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0, "metric": 0.5, "val_metric": 0.6, '
                                                  '"val_ci95": 0.1, "elapsed_s": 1.0}\n')
    with pytest.raises(FewshotError, match=r"these runs measure different things \(accuracy, mse\)"):
        plot.plot_runs([sine, classification], tmp_path / "x.png")
