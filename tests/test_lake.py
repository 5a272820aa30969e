"""`fewshot eval RUN --lake PATH`: Lake et al.'s 20-way within-alphabet one-shot runs.

No published file is needed: the tests draw small Omniglot-like characters (105x105
1-bit PNGs, the official layout), import them with the dataset importer, and write
runs in the published format (runNN/training/classKK.png, runNN/test/itemMM.png,
class_labels.txt) from the same PNGs."""
import io
import json
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fewshot import algorithms, checkpoint, data
from fewshot.data import omniglot
from fewshot.data.episodes import to_float
from fewshot.data.images import read_dataset
from fewshot.errors import FewshotError
from fewshot.evaluate import load_algorithm, meta_test_outputs
from fewshot.inputs import image_inputs
from fewshot.lake import classify_run, evaluate_lake, read_runs
from fewshot.runs import read_metrics

from helpers import one_error_line, run, tiny_config

ALPHABETS = {"background": ["Alpha", "Beta", "Gamma"], "evaluation": ["Delta"]}
CHARACTERS, DRAWERS = 20, 3


def character_png(char_id, drawer):
    """A 105x105 1-bit PNG (white background, black ink) of a few strokes: the character's
    strokes, moved a little by each drawer."""
    shape, hand = np.random.default_rng(char_id), np.random.default_rng([char_id, drawer])
    image = Image.new("1", (105, 105), 1)
    pen = ImageDraw.Draw(image)
    for _ in range(3):
        points = shape.integers(10, 95, size=(3, 2)) + hand.integers(-3, 4, size=(3, 2))
        pen.line([tuple(p) for p in points.tolist()], fill=0, width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """An official-layout folder images_<set>/<Alphabet>/characterNN/<id>_<drawer>.png;
    returns (folder, {(alphabet, character number, drawer): png bytes})."""
    root = tmp_path_factory.mktemp("omniglot-official")
    files, char_id = {}, 0
    for group, names in ALPHABETS.items():
        for alphabet in names:
            for c in range(1, CHARACTERS + 1):
                char_id += 1
                for drawer in range(1, DRAWERS + 1):
                    path = root / f"images_{group}" / alphabet / f"character{c:02d}" / f"{char_id:04d}_{drawer:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    files[(alphabet, c, drawer)] = character_png(char_id, drawer)
                    path.write_bytes(files[(alphabet, c, drawer)])
    return root, files


def write_runs(root, files, runs=(("run01", "Alpha", 1, 2), ("run02", "Beta", 2, 3)), shift=0):
    """Runs in the published format: run `name` holds the 20 characters of `alphabet`, its
    training images by drawer `train`, its test images by drawer `test`, test item m of
    character (m * 7) % 20 (so that items and classes are not in the same order). `shift`:
    a wrong answer key, each test item paired with another character's training image."""
    for name, alphabet, train, test in runs:
        (root / name / "training").mkdir(parents=True)
        (root / name / "test").mkdir()
        lines = []
        for m in range(1, CHARACTERS + 1):
            character = (m * 7) % CHARACTERS + 1
            (root / name / "test" / f"item{m:02d}.png").write_bytes(files[(alphabet, character, test)])
            (root / name / "training" / f"class{character:02d}.png").write_bytes(files[(alphabet, character, train)])
            answer = (character - 1 + shift) % CHARACTERS + 1
            lines.append(f"{name}/test/item{m:02d}.png {name}/training/class{answer:02d}.png")
        (root / name / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def zip_folder(folder, target):
    with zipfile.ZipFile(target, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder).as_posix())
    return target


@pytest.fixture(scope="module")
def lake(pngs, tmp_path_factory):
    return write_runs(tmp_path_factory.mktemp("lake"), pngs[1])


def checkpoint_of(folder, config, preprocessing, name="model.pt", **state):
    """A checkpoint of a freshly built network of `config` (seeded), as training writes one."""
    torch.manual_seed(0)
    path = folder / name
    checkpoint.save(path, config=config, algorithm=algorithms.build(config).state_dict(), step=0,
                    preprocessing=preprocessing, **state)
    return path


OMNIGLOT_INPUT = {"invert": True, "size": 16, "channels": 1, "mean": None, "std": None}


# -- the conversion ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [28, 20])
def test_a_png_given_as_a_lake_item_becomes_the_tensor_the_importer_made_of_it(pngs, lake, tmp_path, size):
    folder, _ = pngs
    cache = omniglot.import_omniglot(folder, tmp_path / "cache", size=size, progress=False)
    dataset = read_dataset(cache, size)
    config = tiny_config(image_size=size, split="maml", data=str(cache))
    sampler = data.sampler(config, dataset, omniglot.splits(dataset, "maml"), "train", seed=0)
    path = checkpoint_of(tmp_path, config, sampler.preprocessing)  # the preprocessing training records
    inputs = image_inputs(checkpoint.load(path))
    assert inputs.size == size and sampler.preprocessing["invert"]
    run01 = read_runs(lake, inputs.size)[0]
    lake_x = inputs(np.stack(run01.training + run01.test)[:, None])
    # run01: Alpha's characters, training images by drawer 1, test images by drawer 2, in file order
    by_name = {(c.name, c.count): c for c in dataset.classes}
    rows = [by_name[(f"Alpha/character{c:02d}", DRAWERS)].start + drawer - 1
            for drawer in (1, 2) for c in ([k for k in range(1, 21)] if drawer == 1 else
                                           [(m * 7) % 20 + 1 for m in range(1, 21)])]
    importer_x = to_float(dataset.images[rows], sampler.preprocessing)
    assert lake_x.shape == (40, 1, size, size)
    torch.testing.assert_close(lake_x, importer_x, rtol=0, atol=0)
    assert 0 < lake_x.mean() < 0.5  # ink is 1, the background 0: mostly background


# -- scoring ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_norm", ["inductive", "transductive"])
def test_a_test_image_equal_to_its_training_image_is_always_right_and_the_answer_key_is_read(
        pngs, tmp_path, batch_norm):
    """Test item == its character's training image (same drawer): a ProtoNet's distance to
    it is 0, so every trial is right; with the answer key shifted every trial is wrong."""
    config = tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0, batch_norm=batch_norm,
                         ways=5, image_size=16)
    model = checkpoint_of(tmp_path, config, OMNIGLOT_INPUT)
    same = write_runs(tmp_path / "same", pngs[1], runs=(("run01", "Alpha", 1, 1), ("run02", "Gamma", 3, 3)))
    result = evaluate_lake(model, same, progress=False)
    assert result["trials"] == 40 and result["errors"] == 0 and result["error"] == 0
    assert [r["run"] for r in result["runs"]] == ["run01", "run02"]
    wrong = write_runs(tmp_path / "wrong", pngs[1], runs=(("run01", "Alpha", 1, 1),), shift=1)
    result = evaluate_lake(model, wrong, progress=False)
    assert result["errors"] == 20 and result["error"] == 1.0 and result["ci95"] == 0


def test_error_per_run_and_overall_with_a_95_percent_interval(pngs, lake, tmp_path):
    config = tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0, batch_norm="inductive",
                         ways=5, image_size=16)
    result = evaluate_lake(checkpoint_of(tmp_path, config, OMNIGLOT_INPUT), lake, progress=False)
    wrong = [p != a for r in result["runs"] for p, a in zip(r["predicted"], r["answers"])]
    assert result["errors"] == sum(wrong) and result["trials"] == 40 == len(wrong)
    assert [r["errors"] for r in result["runs"]] == [sum(wrong[:20]), sum(wrong[20:])]
    p = sum(wrong) / 40
    assert result["error"] == pytest.approx(p)
    assert result["ci95"] == pytest.approx(1.96 * (p * (1 - p) / 40) ** 0.5)
    # the answers are the published key: test item m (file order) is character (m * 7) % 20 + 1
    assert result["runs"][0]["answers"] == [(m * 7) % 20 for m in range(1, 21)]
    assert {e["model"]: e["error"] for e in result["published"]} == {
        "people": 0.045, "Bayesian Program Learning": 0.033, "siamese network": 0.08,
        "deep convolutional network": 0.135}


EVERY_ALGORITHM = [
    ("maml", dict(ways=20)), ("maml", dict(ways=20, first_order=True)), ("anil", dict(ways=20)),
    ("metasgd", dict(ways=20)), ("mamlpp", dict(ways=20, per_step_bn=True, inner_steps=2, eval_inner_steps=2)),
    ("reptile", dict(ways=20, reptile_eval="transductive")),
    ("reptile", dict(ways=20, reptile_eval="non_transductive")),
    ("protonet", dict(ways=5, head=False, inner_steps=0, eval_inner_steps=0)),
    ("maml", dict(ways=20, batch_norm="inductive"))]


@pytest.mark.parametrize("algorithm,overrides", EVERY_ALGORITHM)
def test_every_algorithm_classifies_each_trial_on_its_own(pngs, lake, tmp_path, algorithm, overrides):
    """A test item's outputs do not change when the run's other test items do."""
    config = tiny_config(algorithm=algorithm, image_size=16, **overrides)
    model = checkpoint_of(tmp_path, config, OMNIGLOT_INPUT)
    result = evaluate_lake(model, lake, progress=False)
    assert result["trials"] == 40 and result["algorithm"] == algorithm
    state = checkpoint.load(model)
    network = algorithms.build(config)
    network.load_state_dict(state["algorithm"])
    network.eval()
    inputs = image_inputs(state)
    run01 = read_runs(lake, 16)[0]
    outputs = classify_run(network, inputs, run01)
    assert outputs.shape == (20, 20)
    assert outputs.argmax(1).tolist() == result["runs"][0]["predicted"]
    others = read_runs(lake, 16)[1].test  # run02's test images in place of run01's items 2-20
    changed = type(run01)(run01.name, run01.training, run01.test[:1] + others[1:], run01.answers)
    torch.testing.assert_close(classify_run(network, inputs, changed)[0], outputs[0], rtol=0, atol=1e-6)


def test_the_transductive_batch_would_let_a_trial_see_the_others(pngs, lake, tmp_path):
    """The control of the test above: MAML's prediction for the test items in one batch
    with transductive batch norm does depend on the other items."""
    config = tiny_config(algorithm="maml", image_size=16, ways=20)
    state = checkpoint.load(checkpoint_of(tmp_path, config, OMNIGLOT_INPUT))
    network = algorithms.build(config)
    network.load_state_dict(state["algorithm"])
    network.eval()
    inputs = image_inputs(state)
    run01, run02 = read_runs(lake, 16)
    adapted = network.adapt(inputs(np.stack(run01.training)[:, None]), torch.arange(20))
    together = network.predict(adapted, inputs(np.stack(run01.test)[:, None]))[0]
    changed = network.predict(adapted, inputs(np.stack(run01.test[:1] + run02.test[1:])[:, None]))[0]
    assert (together - changed).abs().max() > 1e-4


def test_a_zip_scores_as_the_folder_and_the_cli_prints_text_and_json(pngs, lake, tmp_path, capsys):
    config = tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0, ways=5,
                         image_size=16, preset="tiny-protonet")
    model = checkpoint_of(tmp_path, config, OMNIGLOT_INPUT)
    archive = zip_folder(lake, tmp_path / "all_runs.zip")
    code, out, err = run(capsys, "eval", model, "--lake", archive, "--json")
    assert code == 0, err
    from_zip = json.loads(out)
    from_folder = evaluate_lake(model, lake, progress=False)
    assert [r["predicted"] for r in from_zip["runs"]] == [r["predicted"] for r in from_folder["runs"]]
    assert from_zip["error"] == from_folder["error"]
    # a zip whose runs sit under one top folder, as an unzipped-and-rezipped copy has them
    top = tmp_path / "top"
    shutil.copytree(lake, top / "all_runs")
    nested = evaluate_lake(model, zip_folder(top, tmp_path / "nested.zip"), progress=False)
    assert [r["predicted"] for r in nested["runs"]] == [r["predicted"] for r in from_folder["runs"]]
    code, out, err = run(capsys, "eval", model, "--lake", lake)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("tiny-protonet step 0 on the 2 Lake runs of ")
    assert f"error {100 * from_folder['error']:.2f}% +- {100 * from_folder['ci95']:.2f}% (95% CI" in lines[0]
    assert lines[1].startswith("  run01: ") and lines[2].startswith("  run02: ")
    assert "people 4.5%" in lines[-1] and "Bayesian Program Learning 3.3%" in lines[-1]
    assert "siamese network 8.0%" in lines[-1] and "deep convolutional network 13.5%" in lines[-1]


def test_eval_help_names_lake(capsys):
    with pytest.raises(SystemExit):
        run(capsys, "eval", "--help")
    assert "--lake PATH" in capsys.readouterr().out


# -- refusals ---------------------------------------------------------------------------------

def _missing_image(root):
    (root / "run02" / "training" / "class05.png").unlink()


def _missing_test_image(root):
    (root / "run01" / "test" / "item03.png").unlink()


def _names_a_file_not_there(root):
    labels = root / "run01" / "class_labels.txt"
    labels.write_text(labels.read_text().replace("run01/test/item04.png", "run01/test/item44.png"))


def _nineteen_classes(root):
    (root / "run01" / "training" / "class20.png").unlink()
    labels = root / "run01" / "class_labels.txt"
    labels.write_text("".join(line + "\n" for line in labels.read_text().splitlines() if "class20" not in line))


def _a_line_of_three_fields(root):
    labels = root / "run01" / "class_labels.txt"
    labels.write_text(labels.read_text().replace("\n", " extra\n", 1))


def _two_items_one_class(root):
    labels = root / "run01" / "class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[1] = lines[1].split()[0] + " " + lines[0].split()[1]
    labels.write_text("\n".join(lines) + "\n")


def _undecodable(root):
    (root / "run01" / "test" / "item07.png").write_bytes(b"not a png")


@pytest.mark.parametrize("damage,message", [
    (_missing_image, "run02 has 19 training images"),
    (_missing_test_image, "names run01/test/item03.png, which is not there"),
    (_names_a_file_not_there, "names run01/test/item44.png, which is not there"),
    (_nineteen_classes, "run01 has 19 training images"),
    (_a_line_of_three_fields, "line 1 of"),
    (_two_items_one_class, "19 distinct training images"),
    (_undecodable, "cannot read image"),
])
def test_a_malformed_run_gets_one_line_and_exit_2(pngs, tmp_path, capsys, damage, message):
    config = tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0, ways=5, image_size=16)
    model = checkpoint_of(tmp_path, config, OMNIGLOT_INPUT)
    root = write_runs(tmp_path / "runs", pngs[1])
    damage(root)
    for target in (root, zip_folder(root, tmp_path / "damaged.zip")):
        code, _, err = run(capsys, "eval", model, "--lake", target)
        assert code == 2 and message in one_error_line(err), err


def test_what_is_not_a_set_of_runs_gets_one_line(tmp_path, capsys):
    config = tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0, ways=5, image_size=16)
    model = checkpoint_of(tmp_path, config, OMNIGLOT_INPUT)
    (tmp_path / "fake.zip").write_text("not a zip")
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "fake.zip", "is not a readable zip file"),
                            (tmp_path / "nowhere", "does not exist"),
                            (tmp_path / "empty", "holds no Lake runs")):
        code, _, err = run(capsys, "eval", model, "--lake", target)
        assert code == 2 and message in one_error_line(err) and "all_runs.zip" in err, err
    code, _, err = run(capsys, "eval", model, "--lake", tmp_path / "empty", "--tasks", "5")
    assert code == 2 and "--tasks" in one_error_line(err)


def test_a_fixed_five_way_head_cannot_answer_a_20_way_trial(lake, tmp_path, capsys):
    model = checkpoint_of(tmp_path, tiny_config(algorithm="maml", ways=5, image_size=16), OMNIGLOT_INPUT)
    code, _, err = run(capsys, "eval", model, "--lake", lake)
    line = one_error_line(err)
    assert code == 2 and "fixed 5-way output layer" in line and "20-way" in line and "lake-anil" in line


def test_a_model_not_of_images_gets_one_line(lake, tmp_path, capsys):
    model = checkpoint_of(tmp_path, tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0,
                                                ways=5, image_size=16), None)
    code, _, err = run(capsys, "eval", model, "--lake", lake)
    assert code == 2 and "not trained on images" in one_error_line(err)


def test_what_is_asked_of_a_run_is_checked_as_fewshot_eval_checks_it(lake, tmp_path, capsys):
    """Inner steps and rate given with --lake go through the checks of `fewshot eval`:
    ProtoNets have no inner loop to take them, and a count or rate must be one."""
    protonet = checkpoint_of(tmp_path, tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0,
                                                   batch_norm="inductive", ways=5, image_size=16), OMNIGLOT_INPUT)
    maml = checkpoint_of(tmp_path, tiny_config(algorithm="maml", ways=20, image_size=16), OMNIGLOT_INPUT,
                         name="maml.pt")
    for model, flags, message in ((protonet, ["--inner-lr", "0.1"], "no inner loop at meta-test"),
                                  (protonet, ["--inner-steps", "3"], "would be ignored"),
                                  (maml, ["--inner-steps", "-1"], "--inner-steps must be"),
                                  (maml, ["--inner-lr", "nan"], "--inner-lr must be a finite number >= 0")):
        code, _, err = run(capsys, "eval", model, "--lake", lake, *flags)
        assert code == 2 and message in one_error_line(err), (flags, err)
    code, out, err = run(capsys, "eval", protonet, "--lake", lake, "--json")
    assert code == 0 and json.loads(out)["inner_steps"] == 0, err  # what was done: no inner step


def test_lake_trials_with_test_time_shifts_are_each_still_classified_on_its_own(pngs, lake, tmp_path, capsys):
    """--shift with --lake: every trial's outputs are its own test image's copies against the
    run's training images and their copies (evaluate.meta_test_outputs), whatever the batch."""
    for batch_norm in ("inductive", "transductive"):
        config = tiny_config(algorithm="maml", ways=20, image_size=16, batch_norm=batch_norm)
        model = checkpoint_of(tmp_path, config, OMNIGLOT_INPUT, name=f"maml-{batch_norm}.pt")
        code, out, err = run(capsys, "eval", model, "--lake", lake, "--shift", "1", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["shift"] == 1 and "9 copies" in result["adaptation"]
        state = checkpoint.load(model)
        algorithm, inputs = load_algorithm(state), image_inputs(state, "cpu")
        for scored, lake_run in zip(result["runs"], read_runs(lake, 16)):
            support_x = inputs(np.stack(lake_run.training)[:, None])
            support_y = torch.arange(20)
            each_alone = [meta_test_outputs(algorithm, support_x, support_y, inputs(np.stack([image])[:, None]), [2],
                                            alone=True, shift=1)[2].argmax(1).item() for image in lake_run.test]
            assert scored["predicted"] == each_alone
    code, out, err = run(capsys, "eval", model, "--lake", lake)
    assert code == 0 and "shifted" not in out.splitlines()[0]
    code, _, err = run(capsys, "eval", model, "--lake", lake, "--shift", "-2")
    assert code == 2 and "--shift must be" in one_error_line(err)


# -- LEO, through the backbone that made its embeddings ----------------------------------------

@pytest.mark.parametrize("crop", ["center", "multiview"])
def test_leo_sees_lake_images_as_its_embeddings_were_made(pngs, lake, tmp_path, capsys, crop, monkeypatch):
    from fewshot.embed import embed
    monkeypatch.setenv("HOME", str(tmp_path))  # the checkpoints record the data under ~, as for a user's cache
    cache = omniglot.import_omniglot(pngs[0], tmp_path / "cache", size=16, progress=False)
    image_config = tiny_config(data=str(cache), image_size=16, filters=4, split="maml")
    embed(image_config, tmp_path / "emb", steps=2, batch_size=8, progress=False, crops=(crop,))
    capsys.readouterr()  # its log line
    leo = tiny_config(algorithm="leo", model="none", dataset="embeddings", data=str(tmp_path / "emb"),
                      embedding_dim=4, embedding_crop=crop, num_latents=4, ways=5, shots=1, query=1)
    model = checkpoint_of(tmp_path, leo, None)
    state = checkpoint.load(model)
    inputs = image_inputs(state)
    assert inputs.size == 16
    # the embedding of Alpha character01 drawer 1 as `fewshot embed` wrote it, against the Lake item
    dataset, refs = data.load(leo, progress=False)
    split = next(s for s in ("train", "val", "test") if any(r.name == "Alpha.character01" for r in refs[s]))
    row = next(r for r in refs[split] if r.name == "Alpha.character01").start
    run01 = read_runs(lake, 16)[0]
    torch.testing.assert_close(inputs(np.stack(run01.training[:1])[:, None])[0],
                               torch.from_numpy(np.array(dataset.images[row])), rtol=0, atol=1e-5)
    code, out, err = run(capsys, "eval", model, "--lake", lake, "--json")
    assert code == 0 and json.loads(out)["trials"] == 40, err
    # the pretraining itself is no run to score
    code, _, err = run(capsys, "eval", tmp_path / "emb" / "pretrain.pt", "--lake", lake)
    assert code == 2 and "`fewshot embed`'s pretraining" in one_error_line(err)
    (tmp_path / "emb" / "pretrain.pt").unlink()
    code, _, err = run(capsys, "eval", model, "--lake", lake)
    assert code == 2 and "image backbone" in one_error_line(err)


def test_read_runs_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(FewshotError, match="holds no Lake runs"):
        read_runs(tmp_path, 28)


# -- validation runs: each query on its own -----------------------------------------------------

def test_validation_on_lake_runs_classifies_each_query_on_its_own():
    """The trainer's validation (evaluate) on a sampler of Lake-style runs scores each query
    in a batch of the support set and itself, not in a batch of all the queries."""
    from fewshot.data.episodes import EpisodeSampler
    from fewshot.data.images import ImageClass
    from fewshot.evaluate import evaluate
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12 * 4, 1, 16, 16), dtype=np.uint8)
    classes = [ImageClass(f"{'AB'[c // 6]}/character{c:02d}", "background", 4 * c, 4) for c in range(12)]
    config = tiny_config(algorithm="maml", ways=5, image_size=16)
    torch.manual_seed(0)
    network = algorithms.build(config)
    common = dict(ways=5, shots=1, query=1, seed=3, preprocessing=OMNIGLOT_INPUT)
    runs = EpisodeSampler(images, classes, alphabets=[c.name[0] for c in classes], same_drawers=True, alone=True,
                          **common)
    batched = EpisodeSampler(images, classes, alphabets=[c.name[0] for c in classes], same_drawers=True, **common)
    alone, together = evaluate(network, runs, 20), evaluate(network, batched, 20)
    by_hand = []
    for index in range(20):
        task = runs.batch(index, 1)[0]
        adapted = network.adapt(task.support_x, task.support_y)
        outputs = torch.cat([network.predict(adapted, torch.cat([task.support_x, task.query_x[i:i + 1]]))[-1:]
                             for i in range(len(task.query_x))])
        by_hand.append(network.family.metric(outputs, task.query_y))
    assert alone["scores"] == pytest.approx(by_hand, abs=1e-12)
    assert alone["scores"] != together["scores"]  # the batch of all queries would have mattered


def test_evaluation_within_alphabets_scores_each_alphabet_from_its_own_tasks():
    """by_alphabet: each alphabet's tasks (found from each task's classes by hand), their
    mean and interval; none where tasks are drawn across alphabets."""
    from fewshot.data.episodes import EpisodeSampler
    from fewshot.data.images import ImageClass
    from fewshot.evaluate import confidence, evaluate
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(15 * 3, 1, 16, 16), dtype=np.uint8)
    classes = [ImageClass(f"{'ABC'[c // 5]}/character{c:02d}", "background", 3 * c, 3) for c in range(15)]
    alphabets = [(c.name[0], 1 if c.name[0] == "C" else 0) for c in classes]
    torch.manual_seed(0)
    network = algorithms.build(tiny_config(algorithm="protonet", ways=5, image_size=16))
    common = dict(ways=5, shots=1, query=1, seed=4, preprocessing=OMNIGLOT_INPUT)
    result = evaluate(network, EpisodeSampler(images, classes, alphabets=alphabets, **common), 24)
    sampler = EpisodeSampler(images, classes, alphabets=alphabets, **common)
    expected = {}
    for index in range(24):
        first_row = sampler.plans(index, 1)[0].rows[0, 0]
        name = classes[first_row // 3].name[0]
        expected.setdefault(name if name != "C" else "C turned 90", []).append(result["scores"][index])
    assert set(result["by_alphabet"]) == set(expected) and len(expected) == 3
    for name, scores in expected.items():
        mean, ci95 = confidence(scores)
        assert result["by_alphabet"][name] == {"mean": mean, "ci95": ci95, "tasks": len(scores)}
    across = evaluate(network, EpisodeSampler(images, classes, **common), 6)
    assert "by_alphabet" not in across


@pytest.mark.parametrize("preset,extra", [("lake-protonet", ["--set", "ways=10", "--set", "query=2"]),
                                          ("lake-anil", ["--set", "meta_batch=2", "--set", "inner_steps=1",
                                                         "--set", "eval_inner_steps=1"])])
def test_the_lake_presets_train_validate_on_runs_and_answer_lakes_trials(pngs, lake, tmp_path, capsys, preset, extra):
    """Each lake-* preset end to end on the small official-layout copy: meta-training on
    background alphabets, validation on Lake-style runs in a held-out one, `fewshot eval
    --split val` on those runs, and `--lake`."""
    code, out, err = run(capsys, "train", preset, "--data", pngs[0], "--out", tmp_path / "run", "--no-progress",
                         "--set", "image_size=16", "--set", "filters=4", "--set", "steps=2", "--set", "val_every=2",
                         "--set", "val_tasks=3", "--set", "log_every=1", *extra)
    assert code == 0, err
    assert "val accuracy" in out
    validated = [row for row in read_metrics(tmp_path / "run") if "val_metric" in row]
    assert validated and all(sum(r["tasks"] for r in row["val_by_alphabet"].values()) == 3 for row in validated)
    code, out, err = run(capsys, "eval", tmp_path / "run", "--classes", "val", "--tasks", "4", "--no-progress")
    assert code == 0 and "val split" in out and "20-way 1-shot, 1 query per class" in out, err
    assert re.search(r"^  \S+ +accuracy [\d.]+% \+- [\d.]+% \(4 tasks\)$", out, re.M), out  # the one held-out alphabet
    code, out, err = run(capsys, "eval", tmp_path / "run", "--lake", lake, "--json")
    assert code == 0 and json.loads(out)["trials"] == 40, err
    assert json.loads(out)["shift"] == {"lake-protonet": 2, "lake-anil": 0}[preset]  # the preset's eval_shift


def test_an_ensemble_scores_lakes_trials_each_on_its_own_in_each_member(pngs, lake, tmp_path, capsys):
    """`fewshot eval A B --lake`: each test image's log-probabilities from a ProtoNet and a
    20-way MAML network (transductive batch norm, so its trials are made alone), averaged."""
    protonet = checkpoint_of(tmp_path, tiny_config(algorithm="protonet", head=False, inner_steps=0, eval_inner_steps=0,
                                                   ways=5, image_size=16), OMNIGLOT_INPUT, name="protonet.pt")
    maml = checkpoint_of(tmp_path, tiny_config(algorithm="maml", ways=20, image_size=16), OMNIGLOT_INPUT,
                         name="maml.pt")
    code, out, err = run(capsys, "eval", protonet, maml, "--lake", lake, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [m["checkpoint"] for m in result["members"]] == [str(protonet), str(maml)]
    members = [load_algorithm(checkpoint.load(model)).eval() for model in (protonet, maml)]
    inputs = image_inputs(checkpoint.load(protonet), "cpu")
    for scored, lake_run in zip(result["runs"], read_runs(lake, 16)):
        support_x, support_y = inputs(np.stack(lake_run.training)[:, None]), torch.arange(20)
        each_alone = []
        for image in lake_run.test:
            query_x = inputs(np.stack([image])[:, None])
            outputs = [meta_test_outputs(member, support_x, support_y, query_x, [steps], alone=True)[steps]
                       .log_softmax(1) for member, steps in zip(members, (0, 2))]
            each_alone.append(((outputs[0] + outputs[1]) / 2).argmax(1).item())
        assert scored["predicted"] == each_alone
    code, out, err = run(capsys, "eval", protonet, maml, "--lake", lake)
    assert code == 0 and "an ensemble of 2 runs" in out
    five_way = checkpoint_of(tmp_path, tiny_config(algorithm="maml", ways=5, image_size=16), OMNIGLOT_INPUT,
                             name="five.pt")
    code, _, err = run(capsys, "eval", protonet, five_way, "--lake", lake)
    assert code == 2 and "five.pt is a maml network with a fixed 5-way output layer" in one_error_line(err)
