"""`fewshot predict` and `fewshot.load(...).adapt(...).predict(...)` on real Omniglot
characters: support and query folders cut from the official sample zip (105x105
PNGs), a checkpoint trained here on the 28x28 sprites, and every bad input."""
import csv
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot
from fewshot.cli import main
from fewshot.config import apply_overrides, load_preset
from fewshot.data.images import read_dataset
from fewshot.train import train

from conftest import SHARED_DATA

from helpers import one_error_line, run

SAMPLE_ZIP = SHARED_DATA / "omniglot-official-sample" / "images_background_small1.zip"
ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
CHARACTERS = [f"character{i:02d}" for i in range(1, 6)]


def cut(archive, root, alphabet, characters=CHARACTERS):
    """support/<character>/<drawer 1 image>; queries/ holds drawers 2 and 3 of every
    character, singles/ drawer 4 (to be passed file by file). Query files are named
    <character>_<original name> so that a test knows the true class."""
    support, folder, singles = root / "support", root / "queries", root / "singles"
    for path in (folder, singles):
        path.mkdir(parents=True)
    names = archive.namelist()
    for character in characters:
        prefix = f"images_background_small1/{alphabet}/{character}/"
        files = sorted(n for n in names if n.startswith(prefix) and n.endswith(".png"))
        assert len(files) == 20, (alphabet, character)
        for name in files:
            drawer, base = int(name[-6:-4]), Path(name).name
            target = {1: support / character / base, 2: folder / f"{character}_{base}",
                      3: folder / f"{character}_{base}", 4: singles / f"{character}_{base}"}.get(drawer)
            if target:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    return support, sorted(singles.iterdir()), folder


@pytest.fixture(scope="module")
def archive():
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"the official Omniglot sample is not at {SAMPLE_ZIP}")
    with zipfile.ZipFile(SAMPLE_ZIP) as opened:
        yield opened


@pytest.fixture(scope="module")
def sample(archive, tmp_path_factory):
    """(support dir, [single query files], query dir) for 5 Latin characters."""
    return cut(archive, tmp_path_factory.mktemp("latin"), "Latin")


def train_run(folder, cache, **overrides):
    settings = dict(data=str(cache), steps=4, meta_batch=2, filters=8, val_every=2, val_tasks=4, log_every=2,
                    save_every=2)
    settings.update(overrides)
    with pytest.MonkeyPatch.context() as patch:  # a prepared folder is used in place; nothing goes to a cache
        patch.setenv("FEWSHOT_HOME", str(folder / "home"))
        result = train(apply_overrides(load_preset("omniglot-5w1s"), settings), folder / "run", progress=False)
    assert not result["stopped"]
    return folder / "run"


@pytest.fixture(scope="module")
def run_dir(omniglot_cache, tmp_path_factory):
    """A 5-way checkpoint trained for 4 steps on the real 28x28 sprites."""
    return train_run(tmp_path_factory.mktemp("predict-run"), omniglot_cache)


def query_args(sample):
    support, singles, folder = sample
    return ["--support", support, "--query", *singles, folder]


def expected_files(sample):
    _, singles, folder = sample
    return [str(p) for p in singles] + [str(p) for p in sorted(folder.iterdir())]


def true_label(file):
    return Path(file).name.split("_", 1)[0]


def parse_rows(out):
    """`file  label  p  (label p  label p)` -> [(file, [(label, p), ...])]."""
    rows = []
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["file", "label", "probability"]  # the header
    for line in lines[1:]:
        tokens = line.replace("(", " ").replace(")", " ").split()
        file, pairs = tokens[0], tokens[1:]
        rows.append((file, [(pairs[i], float(pairs[i + 1])) for i in range(0, len(pairs), 2)]))
    return rows


def test_one_row_per_query_image_with_a_class_and_its_probability(run_dir, sample, capsys):
    code, out, err = run(capsys, "predict", run_dir, *query_args(sample))
    assert code == 0 and err == ""
    rows = parse_rows(out)
    assert [file for file, _ in rows] == expected_files(sample)  # 5 single files, then the folder's 10
    assert len(rows) == 15
    learner = fewshot.load(run_dir)
    probabilities = learner.adapt(sample[0]).predict(learner.images(expected_files(sample)))
    for (file, top), p in zip(rows, probabilities):
        assert len(top) == 1
        # the most likely class and its probability, as printed with 3 decimals
        assert top[0] == (CHARACTERS[int(p.argmax())], float(f"{p.max().item():.3f}"))


def test_top_k_shows_the_k_most_likely_classes_in_order(run_dir, sample, capsys):
    _, plain, _ = run(capsys, "predict", run_dir, *query_args(sample))
    code, out, _ = run(capsys, "predict", run_dir, *query_args(sample), "--top-k", "3")
    assert code == 0
    rows = parse_rows(out)
    assert len(rows) == 15
    for (file, top), (plain_file, plain_top) in zip(rows, parse_rows(plain)):
        assert file == plain_file and top[0] == plain_top[0]
        labels, ps = [label for label, _ in top], [p for _, p in top]
        assert len(top) == 3 and len(set(labels)) == 3 and set(labels) <= set(CHARACTERS)
        assert ps == sorted(ps, reverse=True) and sum(ps) <= 1.0 + 2e-3
    code, out, _ = run(capsys, "predict", run_dir, *query_args(sample), "--top-k", "9")
    assert code == 0 and all(len(top) == 5 for _, top in parse_rows(out))  # at most all the classes


def predict_json(capsys, run_dir, sample, *extra):
    code, out, err = run(capsys, "predict", run_dir, *query_args(sample), "--json", *extra)
    assert code == 0, err
    return out, json.loads(out)


def test_json_holds_every_class_probability(run_dir, sample, capsys):
    _, document = predict_json(capsys, run_dir, sample)
    _, text, _ = run(capsys, "predict", run_dir, *query_args(sample))
    assert document["classes"] == CHARACTERS and document["checkpoint"] == str(run_dir)
    predictions = document["predictions"]
    assert [p["file"] for p in predictions] == expected_files(sample)
    for prediction, (file, top) in zip(predictions, parse_rows(text)):
        assert set(prediction) == {"file", "label", "probabilities"}
        probabilities = prediction["probabilities"]
        assert list(probabilities) == CHARACTERS
        assert all(0 < p <= 1 for p in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["label"] == max(probabilities, key=probabilities.get) == top[0][0]
        assert probabilities[prediction["label"]] == pytest.approx(top[0][1], abs=5e-4)


def test_csv_writes_a_header_and_one_row_per_image(run_dir, sample, capsys, tmp_path):
    _, document = predict_json(capsys, run_dir, sample)
    target = tmp_path / "out" / "predictions.csv"
    target.parent.mkdir()
    code, out, _ = run(capsys, "predict", run_dir, *query_args(sample), "--csv", target)
    assert code == 0 and len(out.splitlines()) == 1 + 15  # the table (header and rows) is still printed
    with open(target, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["file", "label", "probability", *[f"p_{c}" for c in CHARACTERS]]
    assert len(table) == 16
    for row, prediction in zip(table[1:], document["predictions"]):
        assert row[0] == prediction["file"] and row[1] == prediction["label"]
        values = [float(v) for v in row[3:]]
        assert values == pytest.approx(list(prediction["probabilities"].values()), abs=1e-6)
        assert float(row[2]) == pytest.approx(prediction["probabilities"][row[1]], abs=1e-6)
    with pytest.raises(SystemExit) as exit:  # one output format at a time: argparse says so
        main([str(a) for a in ["predict", run_dir, *query_args(sample), "--csv", target, "--json"]])
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_two_runs_print_the_same(run_dir, sample, capsys):
    first = run(capsys, "predict", run_dir, *query_args(sample), "--top-k", "2")
    second = run(capsys, "predict", run_dir, *query_args(sample), "--top-k", "2")
    assert first == second and first[0] == 0
    assert predict_json(capsys, run_dir, sample)[0] == predict_json(capsys, run_dir, sample)[0]


def test_python_api_gives_the_clis_probabilities(run_dir, sample, capsys):
    _, document = predict_json(capsys, run_dir, sample)
    expected = torch.tensor([list(p["probabilities"].values()) for p in document["predictions"]])
    learner = fewshot.load(run_dir)
    adapted = learner.adapt(sample[0])
    assert adapted.classes == CHARACTERS
    x = learner.images(expected_files(sample))
    assert x.shape == (15, 1, 28, 28) and x.dtype == torch.float32
    probabilities = adapted.predict(x)
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-6)
    assert [r["label"] for r in adapted.classify(expected_files(sample))] == \
        [p["label"] for p in document["predictions"]]
    # tensors and labels in place of a folder: the same adaptation
    support, labels, classes = learner.read_support(sample[0])
    assert classes == CHARACTERS and labels.tolist() == [0, 1, 2, 3, 4] and support.shape == (5, 1, 28, 28)
    from_tensors = learner.adapt(support, labels)
    assert from_tensors.classes == ["0", "1", "2", "3", "4"]
    torch.testing.assert_close(from_tensors.predict(x), expected, rtol=0, atol=1e-6)
    # --inner-steps overrides the checkpoint's 10 inner steps, as adapt(steps=...) does
    _, zero = predict_json(capsys, run_dir, sample, "--inner-steps", "0")
    without = torch.tensor([list(p["probabilities"].values()) for p in zero["predictions"]])
    torch.testing.assert_close(learner.adapt(sample[0], steps=0).predict(x), without, rtol=0, atol=1e-6)
    assert (without - expected).abs().max() > 1e-3


def test_predict_with_shifts_gives_what_fewshot_eval_computes_for_each_image(run_dir, sample, capsys):
    """--shift N (test-time augmentation) on the predict path: the support set grown by the
    copies, each query's probabilities from its own copies averaged, as meta-test does it."""
    from fewshot.evaluate import meta_test_outputs
    _, document = predict_json(capsys, run_dir, sample, "--shift", "1")
    shifted = torch.tensor([list(p["probabilities"].values()) for p in document["predictions"]])
    learner = fewshot.load(run_dir)
    support, labels, _ = learner.read_support(sample[0])
    x = learner.images(expected_files(sample))
    steps = learner.config.eval_inner_steps
    outputs = meta_test_outputs(learner.algorithm, support, labels, x, [steps], alone=True, shift=1)[steps]
    torch.testing.assert_close(shifted, outputs.softmax(1), rtol=0, atol=1e-6)
    one = learner.adapt(sample[0], shift=1).predict(x[3:4])  # alone, the same answer as in the batch
    torch.testing.assert_close(one, shifted[3:4], rtol=0, atol=1e-6)
    _, plain = predict_json(capsys, run_dir, sample)
    unshifted = torch.tensor([list(p["probabilities"].values()) for p in plain["predictions"]])
    assert (unshifted - shifted).abs().max() > 1e-3
    code, _, err = run(capsys, "predict", run_dir, *query_args(sample), "--shift", "9")
    assert code == 2 and "eval_shift" in one_error_line(err)


def test_an_image_alone_gets_the_answer_it_gets_in_a_batch_of_15(run_dir, sample, capsys):
    learner = fewshot.load(run_dir)
    adapted = learner.adapt(sample[0])
    files = expected_files(sample)
    x = learner.images(files)
    together = adapted.predict(x)
    for i in range(15):
        torch.testing.assert_close(adapted.predict(x[i:i + 1]), together[i:i + 1], rtol=0, atol=0)
    # the default is the support set plus that one image in each batch-norm batch
    algorithm = learner.algorithm
    for i in (0, 7):
        logits = algorithm.predict(adapted.state, torch.cat([adapted.support_x, x[i:i + 1]]))[-1:]
        torch.testing.assert_close(together[i:i + 1], torch.softmax(logits, 1), rtol=0, atol=0)
    # the CLI too: one file on its own prints its row of the 15-image call
    _, batch_out, _ = run(capsys, "predict", run_dir, *query_args(sample), "--json")
    batch_rows = json.loads(batch_out)["predictions"]
    for i in (0, 9, 14):
        _, alone_out, _ = run(capsys, "predict", run_dir, "--support", sample[0], "--query", files[i], "--json")
        assert json.loads(alone_out)["predictions"] == [batch_rows[i]]
    # the transductive protocol normalizes the 15 together: there the answers move
    transductive = adapted.predict(x, transductive=True)
    alone = torch.cat([adapted.predict(x[i:i + 1], transductive=True) for i in range(15)])
    assert (transductive - alone).abs().max() > 0.05
    torch.testing.assert_close(transductive, torch.softmax(algorithm.predict(adapted.state, x), 1), rtol=0, atol=0)


def test_no_image_changes_class_with_the_image_beside_it(run_dir, sample):
    """Every ordered pair of the 15 queries in one call: by default each image keeps its
    own answer; under the transductive protocol some images change class with the
    image beside them (which shows that the pairs can tell)."""
    learner = fewshot.load(run_dir)
    adapted = learner.adapt(sample[0])
    x = learner.images(expected_files(sample))
    own = adapted.predict(x).argmax(1)
    pairs = [(i, j) for i in range(15) for j in range(15) if i != j]
    flips = [(i, j) for i, j in pairs if adapted.predict(x[[i, j]])[0].argmax() != own[i]]
    assert flips == []
    own_transductive = torch.cat([adapted.predict(x[i:i + 1], transductive=True) for i in range(15)]).argmax(1)
    transductive_flips = [(i, j) for i, j in pairs
                          if adapted.predict(x[[i, j]], transductive=True)[0].argmax() != own_transductive[i]]
    assert len(transductive_flips) > 0


def test_predict_on_the_eval_tasks_scores_as_fewshot_eval_under_the_transductive_protocol(run_dir):
    """predict's path (Learner.adapt, Adapted.outputs) on fewshot eval's 20 test tasks: with
    transductive=True the scores are eval's; by default each query is scored in a batch with the
    support set only, written out here."""
    from fewshot import data
    from fewshot.config import eval_query
    from fewshot.evaluate import confidence, evaluate_checkpoint
    evaluated = evaluate_checkpoint(run_dir, tasks=20, progress=False)
    learner = fewshot.load(run_dir)
    config = learner.config
    dataset, refs = data.load(config, progress=False)
    sampler = data.sampler(config, dataset, refs, "test", config.eval_seed, query=eval_query(config))
    transductive, independent, written_out = [], [], []
    for index in range(20):
        task = sampler.batch(index, 1)[0]
        adapted = learner.adapt(task.support_x, task.support_y)
        metric = learner.algorithm.family.metric
        transductive.append(metric(adapted.outputs(task.query_x, transductive=True), task.query_y))
        independent.append(metric(adapted.outputs(task.query_x), task.query_y))
        state = learner.algorithm.adapt(task.support_x, task.support_y)
        right = [int(learner.algorithm.predict(state, torch.cat([task.support_x, q[None]]))[-1].argmax()) == int(y)
                 for q, y in zip(task.query_x, task.query_y)]
        written_out.append(sum(right) / len(right))
    assert evaluated["scores"] == transductive
    assert confidence(transductive) == (evaluated["mean"], evaluated["ci95"])
    assert independent == written_out
    assert independent != transductive  # the two protocols differ on these tasks


def test_a_class_folder_whose_name_is_not_utf8_is_printed_and_written_to_csv(run_dir, sample, tmp_path, capsys):
    support = tmp_path / "support"
    for index, character in enumerate(CHARACTERS):
        name = os.fsencode(character) + (b"-caf\xe9" if index == 2 else b"")  # Latin-1 bytes: not UTF-8
        folder = os.path.join(os.fsencode(support), name)
        os.makedirs(folder)
        for image in (sample[0] / character).iterdir():
            Path(os.fsdecode(os.path.join(folder, os.fsencode(image.name)))).write_bytes(image.read_bytes())
    target = tmp_path / "predictions.csv"
    code, out, err = run(capsys, "predict", run_dir, "--support", support, "--query", sample[2], "--csv", target)
    assert code == 0 and err == "" and len(out.splitlines()) == 1 + 10  # header and rows
    with open(target, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header[3:] == [f"p_{c}" for c in CHARACTERS[:2]] + ["p_character03-caf\\xe9"] + \
        [f"p_{c}" for c in CHARACTERS[3:]]
    assert fewshot.load(run_dir).adapt(support).classes[2] == "character03-caf\\xe9"


def test_any_image_mode_is_converted_as_at_training(run_dir, sample, tmp_path, capsys):
    """The same characters as RGB PNG copies give the very same probabilities."""
    support, singles, _ = sample
    copies = tmp_path / "rgb"
    copies.mkdir()
    for path in singles:
        Image.open(path).convert("RGB").save(copies / path.name)
    assert Image.open(singles[0]).mode == "1" and Image.open(copies / singles[0].name).mode == "RGB"
    _, original, _ = run(capsys, "predict", run_dir, "--support", support, "--query", *singles, "--json")
    _, converted, _ = run(capsys, "predict", run_dir, "--support", support, "--query", copies, "--json")
    original, converted = json.loads(original)["predictions"], json.loads(converted)["predictions"]
    assert [Path(p["file"]).name for p in converted] == [p.name for p in singles]
    assert [p["probabilities"] for p in converted] == [p["probabilities"] for p in original]


def test_a_users_png_becomes_exactly_what_training_saw(run_dir, sample, omniglot_cache):
    """The 105x105 PNG of a drawing, read by predict, is bit for bit the model input
    that meta-training made of the same drawing in the 28x28 sprites (gray, LANCZOS,
    inverted so that ink is 1)."""
    learner = fewshot.load(run_dir)
    assert learner.preprocessing == {"dataset": "omniglot", "invert": True, "size": 28, "channels": 1, "mean": None,
                                     "std": None}  # the kind of data: recorded since issue 23
    dataset = read_dataset(omniglot_cache, 28)
    classes = {c.name: c for c in dataset.classes}
    files = expected_files(sample)
    for image, file in zip(learner.images(files), files):
        drawer = int(Path(file).stem.rsplit("_", 1)[1])
        cls = classes[f"Latin/{true_label(file)}"]
        assert cls.count == 20
        row = torch.from_numpy(np.array(dataset.images[cls.start + drawer - 1]))
        assert torch.equal(image, 1 - row.to(torch.float32) / 255), file
        assert image[0, 0, 0] == 0 and image.max() == 1  # white paper is 0, ink is 1


def test_the_support_images_themselves_are_given_their_own_classes(run_dir, sample, capsys):
    """After adapting to the support set, each support image is labelled with its own
    folder: the labels are wired to the right class names."""
    support = sample[0]
    files = sorted(support.glob("*/*.png"))
    code, out, _ = run(capsys, "predict", run_dir, "--support", support, "--query", *files, "--json")
    assert code == 0
    predictions = json.loads(out)["predictions"]
    assert [p["label"] for p in predictions] == [f.parent.name for f in files]


def cut_all_drawers(archive, root, alphabet):
    """support/<character>/<drawer 1>, and queries/<character>_<name> of drawers 2 to 20."""
    support, queries = root / "support", root / "queries"
    queries.mkdir(parents=True)
    for character in CHARACTERS:
        prefix = f"images_background_small1/{alphabet}/{character}/"
        for name in sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".png")):
            target = support / character / Path(name).name if int(name[-6:-4]) == 1 else \
                queries / f"{character}_{Path(name).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    return support, queries


def binomial_tail(n, p, k):
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_a_short_training_run_predicts_new_drawings_better_than_chance(archive, omniglot_cache, tmp_path):
    """60 steps on the sprites, then 5 alphabets x 5 characters x 19 queries (drawers
    2-20) from one drawing each. A classifier that ignores the image answers each query
    right with probability 1/5; it reaches the threshold below with probability under
    1e-6 (the binomial tail, computed here). Seeds 0, 1, 2 of this run got 170, 169
    and 186 of 475."""
    learner = fewshot.load(train_run(tmp_path, omniglot_cache, steps=60, meta_batch=8, filters=16,
                                     val_every=60, val_tasks=4, log_every=60, save_every=60))
    correct, total = 0, 0
    for alphabet in ALPHABETS:
        support, queries = cut_all_drawers(archive, tmp_path / alphabet, alphabet)
        rows = learner.adapt(support).classify([queries])
        correct += sum(row["label"] == true_label(row["file"]) for row in rows)
        total += len(rows)
    assert total == 475
    threshold = min(k for k in range(total + 1) if binomial_tail(total, 0.2, k) < 1e-6)
    assert threshold == 139  # 95 expected at chance
    assert correct >= threshold, correct


@pytest.fixture
def seven_classes(archive, tmp_path):
    return cut(archive, tmp_path / "seven", "Korean", [f"character{i:02d}" for i in range(1, 8)])[0]


def test_a_support_set_with_another_number_of_classes_names_both_numbers(run_dir, sample, seven_classes, capsys):
    code, _, err = run(capsys, "predict", run_dir, "--support", seven_classes, "--query", sample[2])
    assert code == 2
    line = one_error_line(err)
    assert "7 classes" in line and "5-way" in line
    three = seven_classes.parent / "three"
    three.mkdir()
    for character in CHARACTERS[:3]:
        (seven_classes / character).rename(three / character)
    code, _, err = run(capsys, "predict", run_dir, "--support", three, "--query", sample[2])
    assert code == 2 and "3 classes" in one_error_line(err)
    with pytest.raises(fewshot.FewshotError, match="7 classes"):
        fewshot.load(run_dir).adapt(torch.zeros(7, 1, 28, 28), torch.arange(7))


@pytest.fixture
def bad_paths(sample, tmp_path):
    support, singles, folder = sample
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-images" / "a").mkdir(parents=True)
    (tmp_path / "not-images" / "a" / "notes.txt").write_text("x")
    corrupt = tmp_path / "corrupt" / "broken.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(singles[0].read_bytes()[:200])
    bad_support = tmp_path / "bad-support"
    for character in CHARACTERS:
        (bad_support / character).mkdir(parents=True)
        (bad_support / character / "1.png").write_bytes(next((support / character).iterdir()).read_bytes())
    (bad_support / "character03" / "2.png").write_bytes(b"garbage")
    return {"SUPPORT": support, "QUERY": singles[0], "MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty",
            "NOT_IMAGES": tmp_path / "not-images", "FILE": singles[0], "CORRUPT": corrupt,
            "TRUNCATED": truncated, "BAD_SUPPORT": bad_support, "BAD_IMAGE": bad_support / "character03" / "2.png",
            "MISSING_PT": tmp_path / "missing.pt"}


@pytest.mark.parametrize("argv,message,named", [
    (["--support", "MISSING", "--query", "QUERY"], "is not a folder", "MISSING"),
    (["--support", "FILE", "--query", "QUERY"], "is not a folder", "FILE"),
    (["--support", "EMPTY", "--query", "QUERY"], "holds no class folders with images", "EMPTY"),
    (["--support", "NOT_IMAGES", "--query", "QUERY"], "holds no class folders with images", "NOT_IMAGES"),
    (["--support", "SUPPORT", "--query", "QUERY", "MISSING"], "does not exist", "MISSING"),
    (["--support", "SUPPORT", "--query", "EMPTY"], "holds no images", "EMPTY"),
    (["--support", "SUPPORT", "--query", "QUERY", "CORRUPT"], "cannot read image", "CORRUPT"),
    (["--support", "SUPPORT", "--query", "TRUNCATED"], "cannot read image", "TRUNCATED"),
    (["--support", "SUPPORT", "--query", "CORRUPT", "QUERY"], "cannot read image", "CORRUPT"),
    (["--support", "BAD_SUPPORT", "--query", "QUERY"], "cannot read image", "BAD_IMAGE"),
    (["--support", "SUPPORT", "--query", "QUERY", "--top-k", "0"], "--top-k must be at least 1", None),
])
def test_bad_input_gets_one_clear_line(run_dir, bad_paths, capsys, argv, message, named):
    code, out, err = run(capsys, "predict", run_dir, *[bad_paths.get(a, a) for a in argv])
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert message in line
    if named:
        assert str(bad_paths[named]) in line


def test_a_missing_checkpoint_or_one_not_trained_on_images(bad_paths, tmp_path, capsys):
    code, _, err = run(capsys, "predict", bad_paths["MISSING_PT"], "--support", bad_paths["SUPPORT"],
                       "--query", bad_paths["QUERY"])
    assert code == 2 and "does not exist" in one_error_line(err)
    sine = tmp_path / "sine"
    train(apply_overrides(load_preset("sinusoid-10shot"), dict(steps=2, val_every=2, val_tasks=2, save_every=2)),
          sine, progress=False)
    code, _, err = run(capsys, "predict", sine, "--support", bad_paths["SUPPORT"], "--query", bad_paths["QUERY"])
    assert code == 2 and "not trained on images" in one_error_line(err)
    # regression checkpoints take tensors from Python
    learner = fewshot.load(sine)
    x = torch.linspace(-5, 5, 10).unsqueeze(1)
    adapted = learner.adapt(x, torch.sin(x))
    assert adapted.classes is None
    assert adapted.predict(x).shape == (10, 1) and np.isfinite(adapted.predict(x).numpy()).all()


def test_csv_naming_a_folder_gets_one_line(run_dir, sample, tmp_path, capsys):
    code, _, err = run(capsys, "predict", run_dir, *query_args(sample), "--csv", tmp_path)
    assert code == 2 and str(tmp_path) in one_error_line(err)


def test_negative_steps_get_one_line(run_dir, sample, capsys):
    code, _, err = run(capsys, "predict", run_dir, *query_args(sample), "--inner-steps", "-2")
    assert code == 2 and "--inner-steps must be at least 0, got -2" in one_error_line(err)


@pytest.mark.parametrize("algorithm,overrides", [
    ("maml", {}), ("mamlpp", {"per_step_bn": True, "inner_steps": 2, "eval_inner_steps": 2}),
    ("protonet", {"head": False}), ("reptile", {"reptile_eval": "transductive"}),
    ("reptile", {"reptile_eval": "non_transductive"}), ("maml", {"batch_norm": "inductive"}),
    ("protonet", {"head": False, "batch_norm": "inductive"})])
def test_every_algorithm_answers_an_image_alone_as_in_a_batch(algorithm, overrides):
    """No shared data needed: a freshly built checkpoint of each algorithm, tensors in.
    What holds on every machine: with transductive batch norm each image is computed in a
    forward of its own (the support set plus that image), the very computation whether it came
    alone or among others, so the answers are bitwise equal; with running statistics (inductive)
    the images of a call go through one forward, and a batch of 6 and a batch of 1 may use
    kernels that round differently (3e-8 apart on one CPU): equal within float32 rounding."""
    from fewshot import algorithms
    from fewshot.predict import Learner
    from helpers import tiny_config
    torch.manual_seed(0)
    config = tiny_config(algorithm=algorithm, **overrides)
    state = {"config": config, "algorithm": algorithms.build(config).state_dict(), "step": 0, "preprocessing": None}
    learner = Learner(state)
    generator = torch.Generator().manual_seed(1)
    support, labels = torch.rand(3, 1, 16, 16, generator=generator), torch.arange(3)
    queries = torch.rand(6, 1, 16, 16, generator=generator)
    adapted = learner.adapt(support, labels)
    together = adapted.predict(queries)
    exact = dict(rtol=0, atol=0) if config.batch_norm == "transductive" else dict(rtol=1e-5, atol=1e-6)
    for i in range(6):
        torch.testing.assert_close(adapted.predict(queries[i:i + 1]), together[i:i + 1], **exact)
    # transductive batch norm: the default is the support set plus that image, in one batch
    if config.batch_norm == "transductive" and algorithm != "protonet" and \
            config.reptile_eval != "non_transductive":
        logits = learner.algorithm.predict(adapted.state, torch.cat([support, queries[2:3]]))[-1:]
        torch.testing.assert_close(together[2:3], torch.softmax(logits, 1), rtol=0, atol=0)
        moved = adapted.predict(queries, transductive=True) - \
            torch.cat([adapted.predict(queries[i:i + 1], transductive=True) for i in range(6)])
        assert moved.abs().max() > 1e-4  # there the batch matters


def test_the_cli_transductive_flag_gives_the_apis_transductive_answers(run_dir, sample, capsys):
    _, document = predict_json(capsys, run_dir, sample, "--transductive")
    printed = torch.tensor([list(p["probabilities"].values()) for p in document["predictions"]])
    learner = fewshot.load(run_dir)
    x = learner.images(expected_files(sample))
    adapted = learner.adapt(sample[0])
    torch.testing.assert_close(printed, adapted.predict(x, transductive=True), rtol=0, atol=1e-6)
    _, default = predict_json(capsys, run_dir, sample)
    assert (printed - torch.tensor([list(p["probabilities"].values()) for p in default["predictions"]])).abs().max() > 1e-3


def fresh_learner(**overrides):
    """A Learner on a freshly built checkpoint (no shared data), and a 3-way support set."""
    from fewshot import algorithms
    from fewshot.predict import Learner
    from helpers import tiny_config
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    state = {"config": config, "algorithm": algorithms.build(config).state_dict(), "step": 0, "preprocessing": None}
    generator = torch.Generator().manual_seed(1)
    return Learner(state), torch.rand(3, 1, 16, 16, generator=generator), torch.arange(3)


def test_inner_steps_asked_of_a_learner_are_checked_as_a_presets():
    """`predict --steps` and `fewshot.load(...).adapt(steps=...)`: what eval_inner_steps may
    not be in a preset, they may not ask (config.meta_test)."""
    learner, support, labels = fresh_learner(algorithm="mamlpp", per_step_bn=True, inner_steps=2, eval_inner_steps=2)
    learner.adapt(support, labels, steps=2)
    with pytest.raises(fewshot.FewshotError, match=r"eval_inner_steps \(3\) > inner_steps \(2\) would adapt with "
                                                   r"untrained ones; ask this run for at most 2 inner steps$"):
        learner.adapt(support, labels, steps=3)
    learner, support, labels = fresh_learner(algorithm="protonet", head=False, inner_steps=5, inner_lr=0.4,
                                             eval_inner_steps=10)
    learner.adapt(support, labels)
    with pytest.raises(fewshot.FewshotError, match="eval_inner_steps: 1 would be ignored"):
        learner.adapt(support, labels, steps=1)
    # a rate: not where there is no inner loop, and a finite one >= 0 where there is
    with pytest.raises(fewshot.FewshotError, match="no inner loop at meta-test"):
        learner.adapt(support, labels, lr=0.1)
    learner, support, labels = fresh_learner()
    for rate in (float("nan"), -1.0, float("inf")):
        with pytest.raises(fewshot.FewshotError, match="--inner-lr must be a finite number >= 0"):
            learner.adapt(support, labels, lr=rate)
    learner.adapt(support, labels, lr=0.0)


@pytest.mark.parametrize("value,tf32", [("fp32", False), ("tf32", True), ("bf16", False)])
def test_a_learner_adapts_and_predicts_in_the_runs_precision(monkeypatch, value, tf32):
    """As `fewshot eval` and the run's validation: precision.configure's flags, no autocast,
    and the caller's flags back afterwards."""
    from fewshot.algorithms.maml import MAML
    from helpers import configure_as_on_cuda, tf32_flags
    seen = []

    def spying(real):
        def call(self, *args, **kwargs):
            seen.append((*tf32_flags(), torch.is_autocast_enabled("cpu")))
            return real(self, *args, **kwargs)
        return call

    monkeypatch.setattr(MAML, "adapt", spying(MAML.adapt))
    monkeypatch.setattr(MAML, "predict", spying(MAML.predict))
    with configure_as_on_cuda(monkeypatch, (not tf32,) * 2):
        learner, support, labels = fresh_learner(precision=value)
        adapted = learner.adapt(support, labels)
        adapted.predict(support)
        adapted.predict(support, transductive=True)
        assert seen and set(seen) == {(tf32, tf32, False)}
        assert tf32_flags() == (not tf32,) * 2
