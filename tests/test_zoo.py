"""Shipped models (fewshot.zoo): a tiny model trained here, shipped into a temporary
folder by scripts/ship_model.py, then used by name wherever a run folder goes; and the
package's own folder: its size, its cards, the wheel that carries it, and the table of
docs/results.md made from its cards."""
import hashlib
import os
import json
import shlex
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot
from fewshot import checkpoint, zoo
from fewshot.cli import _config, parser
from fewshot.config import load_preset
from fewshot.errors import FewshotError
from fewshot.evaluate import evaluate_checkpoint
from fewshot.train import initial_weights, train

from helpers import ROOT, one_error_line, run, script, shipping_workplace, tiny_config

NAME = "tiny-omniglot"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny run of the omniglot-5w1s preset's network on a tagged dataset named under
    FEWSHOT_HOME, trained in two processes (stopped at step 2, resumed to 4), shipped
    into its own folder: (folder of models, run folder, card, FEWSHOT_HOME)."""
    base = tmp_path_factory.mktemp("zoo")
    with shipping_workplace(base) as home:
        config = tiny_config(preset="omniglot-5w1s", description=load_preset("omniglot-5w1s").description,
                             data="tagged", steps=4, bn_scale=load_preset("omniglot-5w1s").bn_scale)
        train(config, "run", progress=False, stop_after=2)
        train(out="run", resume=True, progress=False)
        assert script("ship_model").main(["run", NAME, "--machine", "the test machine", "--no-progress"]) == 0
        card = zoo.card(NAME)
    return base / "models", base / "run", card, home


@pytest.fixture
def using(shipped, monkeypatch):
    """The shipped model's folder and FEWSHOT_HOME in effect, run from the folder that holds the run."""
    models, run_dir, card, home = shipped
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(models))
    monkeypatch.setenv("FEWSHOT_HOME", str(home))
    monkeypatch.chdir(run_dir.parent)
    return shipped


def test_fewshot_eval_name_gives_the_cards_score_exactly(using, capsys):
    models, run_dir, card, _ = using
    code, out, err = run(capsys, "eval", NAME, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["mean"], result["ci95"], result["tasks"], result["step"]) == \
           (card.test_mean, card.test_ci95, card.test_tasks, card.steps)
    # and the shipped weights score as the run they came from (its best.pt)
    from_run = evaluate_checkpoint(run_dir, progress=False)
    assert (from_run["mean"], from_run["ci95"], from_run["step"]) == (card.test_mean, card.test_ci95, card.steps)
    assert card.test_tasks == 5 and card.test_seed == 1234 and card.test_inner_steps == 2  # tiny_config's


def test_the_card_describes_the_run_and_the_file(using):
    models, run_dir, card, _ = using
    assert (card.preset, card.algorithm, card.data, card.split) == ("omniglot-5w1s", "maml", "tagged", "maml")
    assert (card.steps, card.run_steps, card.paper_steps) == (4, 4, 60000)
    assert (card.paper_figure, card.paper_source) == ("98.7 +- 0.4%", "Finn et al. 2017")
    assert card.machine == "the test machine" and card.metric == "accuracy"
    assert (card.test_ways, card.test_shots, card.evaluation_changes) == (3, 1, [])
    weights = (models / card.weights).read_bytes()
    assert card.sha256 == hashlib.sha256(weights).hexdigest() and card.weights_bytes == len(weights)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # two processes: each one's clock at its last row (steps 2 and 4), summed
    assert card.training_processes == 2
    assert card.training_seconds == round(rows[0]["elapsed_s"] + rows[1]["elapsed_s"], 1)
    assert [row[0] for row in card.validation_curve] == [2, 4]
    assert card.eval_command == f"fewshot eval {NAME} --device cpu"
    assert card.ship_command == f"python scripts/ship_model.py run {NAME} --machine 'the test machine' --no-progress"
    assert zoo.read_card(models / f"{NAME}.yaml") == card


def test_the_weights_file_holds_no_optimizer_state_and_no_path_of_the_machine(using):
    models, run_dir, card, _ = using
    state = torch.load(models / card.weights, weights_only=True)
    assert set(state) == {"format", "version", "config", "algorithm", "step", "preprocessing"}
    assert state["config"]["data"] == "tagged" and state["config"]["init"] is None
    run_state = checkpoint.load(run_dir / "best.pt")
    assert "optimizer" in run_state  # what was left behind
    assert state["algorithm"].keys() == run_state["algorithm"].keys()
    assert all(torch.equal(state["algorithm"][k], run_state["algorithm"][k]) for k in state["algorithm"])


def test_the_rebuilt_train_command_trains_the_same_config(using):
    models, run_dir, card, _ = using
    first, resume = card.train_commands
    args = parser().parse_args(shlex.split(first)[1:])
    assert args.out == "run"
    shipped_config = checkpoint.load(models / card.weights)["config"]
    assert _config(args) == shipped_config
    assert resume.startswith("fewshot train --resume run")


def test_a_name_works_wherever_a_run_folder_does(using, capsys, tmp_path):
    models, run_dir, card, _ = using
    # fewshot.load(NAME) and fewshot.load(run) adapt and predict alike
    task_x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    by_name, by_run = fewshot.load(NAME), fewshot.load(run_dir)
    assert by_name.step == by_run.step == card.steps
    assert torch.equal(by_name.adapt(task_x[:3], labels).predict(task_x[3:]),
                       by_run.adapt(task_x[:3], labels).predict(task_x[3:]))
    # fewshot predict NAME on new images, no training
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16), dtype=np.uint8)
    for index in range(3):
        (tmp_path / "support" / f"class{index}").mkdir(parents=True)
        Image.fromarray(pixels[index]).save(tmp_path / "support" / f"class{index}" / "1.png")
    for index in (3, 4):
        Image.fromarray(pixels[index]).save(tmp_path / f"query{index}.png")
    queries = [tmp_path / "query3.png", tmp_path / "query4.png"]
    code, named, err = run(capsys, "predict", NAME, "--support", tmp_path / "support", "--query", *queries)
    assert code == 0, err
    code, from_run, err = run(capsys, "predict", run_dir, "--support", tmp_path / "support", "--query", *queries)
    assert named == from_run and len(named.splitlines()) == 3
    # fewshot train PRESET --init NAME starts from the shipped weights
    weights = initial_weights(tiny_config(preset="omniglot-5w1s", data="tagged", init=NAME,
                                          bn_scale=load_preset("omniglot-5w1s").bn_scale))
    shipped_weights = checkpoint.load(models / card.weights)["algorithm"]
    assert all(torch.equal(weights[k], shipped_weights[k]) for k in shipped_weights)
    code, out, err = run(capsys, "train", "omniglot-5w1s", "--data", "tagged", "--out", tmp_path / "from-model",
                         "--init", NAME, *[f"--set={k}={v}" for k, v in
                                           dict(ways=3, shots=1, query=2, filters=4, image_size=16, meta_batch=2,
                                                steps=1, val_every=1, val_tasks=2, eval_tasks=2).items()])
    assert code == 0, err
    assert checkpoint.load(tmp_path / "from-model" / "last.pt")["config"].init == NAME
    # a file or folder of that name comes first
    (tmp_path / "here").mkdir()
    shutil.copytree(run_dir, tmp_path / "here" / NAME)
    assert checkpoint.find(tmp_path / "here" / NAME) == tmp_path / "here" / NAME / "best.pt"


def test_fewshot_models_lists_the_cards(using, capsys):
    models, run_dir, card, _ = using
    code, out, err = run(capsys, "models")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"{NAME}: MAML, Omniglot 5-way 1-shot")
    assert f"test accuracy {100 * card.test_mean:.2f}% +- {100 * card.test_ci95:.2f}%" in out
    assert f"sha256 {card.sha256}" in out and "DAMAGED" not in out
    assert "5 fixed 3-way 1-shot test tasks" in out and "4 meta-steps of the paper's 60000" in out
    assert f"reproduce: fewshot eval {NAME} --device cpu" in out
    code, out, err = run(capsys, "models", "--json")
    assert json.loads(out) == [card.to_dict()]
    code, out, err = run(capsys, "models", NAME, "--json")
    assert json.loads(out) == card.to_dict()
    code, out, err = run(capsys, "models", "nothing-here")
    assert code == 2 and f"the shipped ones are {NAME}" in one_error_line(err)


def test_a_card_says_when_its_weights_are_the_best_of_a_longer_run_and_names_its_metric_once(using):
    from dataclasses import replace
    _, _, card, _ = using
    earlier = replace(card, steps=60000, run_steps=70000, paper_steps=70000, metric="mse", test_mean=0.10489,
                      test_ci95=0.01123)
    lines = zoo.card_lines(earlier)
    assert "  test mse 0.1049 +- 0.0112 (95% interval" in lines[1]
    assert "meta-step 60000 (the best by validation of a 70000-step run) of the paper's 70000" in lines[3]
    assert "| mse 0.1049 +- 0.0112 (5) | 60000 (best of 70000) / 70000 |" in zoo.results_table([earlier])


def test_no_shipped_model_is_said_plainly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(tmp_path / "empty"))
    code, out, err = run(capsys, "models")
    assert code == 0 and out.startswith("no trained model is shipped with fewshot") and not err
    assert json.loads(run(capsys, "models", "--json")[1]) == []
    code, out, err = run(capsys, "eval", "maml-omniglot-5w1s")
    assert code == 2 and "does not exist; give a run folder, a .pt file or the name of a shipped model" in \
        one_error_line(err)
    assert zoo.results_table([]).splitlines()[2] == "| no model shipped yet | - | - | - | - | - | - | - | - | - |"


@pytest.fixture
def copy_of_models(using, tmp_path, monkeypatch):
    """The shipped folder copied, for tests that damage it."""
    models = shutil.copytree(using[0], tmp_path / "models")
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(models))
    return models


def test_a_damaged_or_altered_weights_file_is_one_clear_error(copy_of_models, capsys, monkeypatch):
    weights = copy_of_models / f"{NAME}.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    loaded = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a))  # never read: refused before loading
    for argv in (["eval", NAME], ["predict", NAME, "--support", "s", "--query", "q"]):
        code, out, err = run(capsys, *argv)
        line = one_error_line(err)
        assert code == 2 and f"shipped model {NAME}: its weights file" in line and "sha256 differs" in line
        assert "reinstall fewshot" in line
    assert not loaded
    with pytest.raises(FewshotError, match="sha256 differs"):
        fewshot.load(NAME)
    assert "DAMAGED" in run(capsys, "models")[1]
    weights.unlink()
    code, out, err = run(capsys, "eval", NAME)
    assert code == 2 and "is missing" in one_error_line(err)


def test_a_damaged_card_is_one_clear_error(copy_of_models, capsys):
    card_file = copy_of_models / f"{NAME}.yaml"
    text = card_file.read_text()
    card_file.write_text(text.replace("sha256:", "sha257:"))
    code, out, err = run(capsys, "eval", NAME)
    assert code == 2 and "is damaged (missing sha256; unknown sha257)" in one_error_line(err)
    card_file.write_text(text.replace("\nsteps: 4\n", "\nsteps: four\n"))
    assert "wrong type: steps" in one_error_line(run(capsys, "models")[2])
    card_file.write_text("name: [")
    assert "card" in (line := one_error_line(run(capsys, "eval", NAME)[2])) and "is not valid YAML" in line


def test_ship_refuses_what_it_cannot_ship_and_writes_nothing(using, tmp_path, monkeypatch, capsys):
    models, run_dir, card, _ = using
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(tmp_path / "models"))
    ship = script("ship_model").main
    cases = [(["run", NAME, "--data", str(tmp_path / "data")], "a path of this machine; give --data"),
             (["run", "runs/x"], "is not a plain name"),
             (["run", "Big"], "is not a plain name"),
             (["no-run-here", "x"], "checkpoint no-run-here does not exist")]
    for argv, message in cases:
        assert ship(argv) == 2
        assert message in one_error_line(capsys.readouterr().err)
    monkeypatch.setattr(zoo, "TOTAL_LIMIT_BYTES", card.weights_bytes - 1)
    assert ship(["run", NAME]) == 2
    assert "would take the shipped models past" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    # a name already shipped is replaced only with --force
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(models))
    assert ship(["run", NAME]) == 2
    assert "already shipped" in one_error_line(capsys.readouterr().err)
    # a run trained from no preset of fewshot's names no paper
    train(tiny_config(data="tagged", steps=1), tmp_path / "own", progress=False)
    assert ship([str(tmp_path / "own"), "own"]) == 2
    assert "not one of fewshot's presets" in one_error_line(capsys.readouterr().err)


def test_keep_test_rewrites_a_card_without_reading_the_test_tasks_again(copy_of_models, tmp_path, monkeypatch,
                                                                     capsys):
    """A note corrected after shipping: the same weights, the card's test figures kept."""
    before = zoo.card(NAME)
    import fewshot.evaluate

    def no_second_look(*args, **kwargs):
        raise AssertionError("the test tasks were read again")
    monkeypatch.setattr(fewshot.evaluate, "evaluate_checkpoint", no_second_look)
    ship = script("ship_model").main
    assert ship(["run", NAME, "--keep-test", "--note", "corrected", "--machine", "the test machine"]) == 0, \
        capsys.readouterr().err
    after = zoo.card(NAME)
    assert after.notes == "corrected" and before.notes == ""
    assert (after.test_mean, after.test_ci95, after.test_tasks, after.test_seed, after.sha256) == \
           (before.test_mean, before.test_ci95, before.test_tasks, before.test_seed, before.sha256)
    # the figures name the command that measured them, then the rewrite
    measured, rewrite = after.ship_command.split("; card rewritten, its test figures kept: ")
    assert measured == before.ship_command and "--keep-test" in rewrite
    assert zoo.weights_problem(after) is None
    # other weights (another run) do not inherit the figures, and nothing is written
    card_text = (copy_of_models / f"{NAME}.yaml").read_text()
    train(tiny_config(preset="omniglot-5w1s", description=load_preset("omniglot-5w1s").description,
                      data="tagged", steps=1), tmp_path / "other", progress=False)
    assert ship([str(tmp_path / "other"), NAME, "--keep-test"]) == 2
    assert "differ from those shipped as" in one_error_line(capsys.readouterr().err)
    assert (copy_of_models / f"{NAME}.yaml").read_text() == card_text
    # no card, no figures to keep
    assert ship(["run", "never-shipped", "--keep-test"]) == 2
    assert "no model named never-shipped is shipped" in one_error_line(capsys.readouterr().err)


def test_one_run_ships_as_several_cells_with_other_evaluation_settings(using, tmp_path, monkeypatch, capsys):
    """As ProtoNets: trained once, tested 5- and 20-way; here the 3-way run tested 2-way."""
    models, run_dir, card, _ = using
    monkeypatch.setenv(zoo.FOLDER_VARIABLE, str(tmp_path / "models"))
    ship = script("ship_model").main
    assert ship(["run", "two-way", "--set", "eval_ways=2", "--paper", "-", "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert capsys.readouterr().out.startswith("two-way: ")
    two_way = zoo.card("two-way")
    assert (two_way.test_ways, two_way.evaluation_changes, two_way.paper_figure) == (2, ["eval_ways=2"], "-")
    assert two_way.train_commands == card.train_commands  # the run's own training, not the new evaluation
    result = json.loads(run(capsys, "eval", "two-way", "--json")[1])
    assert (result["ways"], result["mean"], result["ci95"]) == (2, two_way.test_mean, two_way.test_ci95)
    assert "| `two-way` | `omniglot-5w1s` | 2-way 1-shot, eval_ways=2 |" in zoo.results_table([two_way])
    assert "tested with eval_ways=2" in run(capsys, "models", "two-way")[1]
    assert ship(["run", "other", "--set", "steps=5"]) == 2
    assert "may change only how it is evaluated" in one_error_line(capsys.readouterr().err)


def test_training_time_sums_each_process_clock():
    rows = [{"step": 2, "elapsed_s": 1.0}, {"step": 4, "elapsed_s": 2.0, "val_metric": 0.5},
            {"step": 6, "elapsed_s": 0.5}, {"step": 8, "elapsed_s": 1.5, "val_metric": 0.6}]
    assert zoo.training_time(rows, 8) == (3.5, 2, [[4, 2.0, 0.5], [8, 3.5, 0.6]])
    # weights from step 4: the time and processes until then, the curve of the whole run
    assert zoo.training_time(rows, 4) == (2.0, 1, [[4, 2.0, 0.5], [8, 3.5, 0.6]])


def test_the_table_is_made_from_the_cards(using, tmp_path, monkeypatch, capsys):
    models, run_dir, card, _ = using
    table = zoo.results_table([card])
    assert table.splitlines()[2] == (
        f"| `{NAME}` | `omniglot-5w1s` | 3-way 1-shot | 98.7 +- 0.4% (Finn et al. 2017) | "
        f"{100 * card.test_mean:.2f}% +- {100 * card.test_ci95:.2f}% (5) | 4 / 60000 | "
        f"{card.training_seconds / 3600:.2f} | the test machine | - | [curve](img/models/{NAME}.png) |")
    document = tmp_path / "results.md"
    document.write_text(f"# Results\n\n{zoo.TABLE_START}\nold\n{zoo.TABLE_END}\n\nafter\n")
    assert script("results_table").main(["--shipped", "--write", str(document)]) == 0
    assert zoo.table_in(document.read_text()) == table
    assert (tmp_path / "img" / "models" / f"{NAME}.png").is_file()  # the curve the row links to
    assert document.read_text().endswith(f"{zoo.TABLE_END}\n\nafter\n")
    document.write_text("no markers")
    assert script("results_table").main(["--shipped", "--write", str(document)]) == 2
    assert "markers" in one_error_line(capsys.readouterr().err) and document.read_text() == "no markers"


# ---- the package's own folder ---------------------------------------------------------------------------------

def test_docs_results_shows_the_table_of_the_shipped_cards():
    shown = zoo.table_in((ROOT / "docs" / "results.md").read_text(encoding="utf-8"))
    assert shown == zoo.results_table(zoo.cards(zoo.PACKAGE_FOLDER)), \
        "regenerate it: python scripts/results_table.py --shipped --write docs/results.md"
    for card in zoo.cards(zoo.PACKAGE_FOLDER):  # the curve each row links to
        assert (ROOT / "docs" / zoo.CURVES / f"{card.name}.png").is_file(), "regenerate it (the same command)"


def test_a_models_curve_is_drawn_from_its_card(using, tmp_path, capsys, monkeypatch):
    from PIL import Image
    _, _, card, _ = using
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "plot", NAME)  # a model's name, as a run folder's
    assert code == 0, err
    assert out.strip() == f"wrote {NAME}-curves.png"
    with Image.open(tmp_path / f"{NAME}-curves.png") as image:
        assert image.format == "PNG" and image.width > 500


def test_the_shipped_models_are_whole_and_small():
    folder = zoo.PACKAGE_FOLDER
    assert zoo.folder_bytes(folder) == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert zoo.folder_bytes(folder) < zoo.TOTAL_LIMIT_BYTES == 20_000_000
    cards = zoo.cards(folder)
    expected = {"README.md"} | {c.weights for c in cards} | {f"{c.name}.yaml" for c in cards}
    assert {p.name for p in folder.iterdir()} == expected  # nothing but cards, their weights, the README
    for card in cards:
        assert zoo.weights_problem(card, folder) is None, card.name
        state = torch.load(folder / card.weights, weights_only=True)
        assert "optimizer" not in state and state["config"]["preset"] == card.preset


def test_the_wheel_holds_the_cards_and_weights(tmp_path, shipped):
    """Built from a copy of the source with the tiny model added to its pretrained/ folder."""
    pytest.importorskip("setuptools", reason="building fewshot's wheel offline needs setuptools in this env")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for path in shipped[0].iterdir():
        shutil.copy(path, source / "src" / "fewshot" / "pretrained" / path.name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path / "wheels"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel, = (tmp_path / "wheels").glob("fewshot-*.whl")
    held = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fewshot/pretrained/")}
    wanted = {f"fewshot/pretrained/{p.name}" for p in (source / "src" / "fewshot" / "pretrained").iterdir()
              if p.suffix in (".pt", ".yaml")}
    assert {f"fewshot/pretrained/{NAME}.pt", f"fewshot/pretrained/{NAME}.yaml"} <= wanted
    assert wanted <= held
    with zipfile.ZipFile(wheel) as archive:
        assert hashlib.sha256(archive.read(f"fewshot/pretrained/{NAME}.pt")).hexdigest() == shipped[2].sha256


def test_fewshot_models_answers_without_importing_torch(shipped):
    """Listing reads the cards and hashes the weights; torch is loaded only to use a model."""
    code = ("import sys\nfrom fewshot.cli import main\nmain(['models'])\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, zoo.FOLDER_VARIABLE: str(shipped[0])})
    assert done.returncode == 0 and done.stdout.startswith(f"{NAME}: ") and done.stderr.split() == ["False"]
