"""The Omniglot one-shot challenge as published: Lake, Salakhutdinov & Tenenbaum
(Science 2015), 20 runs of 20-way one-shot classification within one alphabet.

The runs are `all_runs.zip` of the Omniglot repository (brendenlake/omniglot,
`python/one-shot-classification/`), or the folder it unzips to: `run01` ... `run20`,
each with `training/class01.png` ... `class20.png` (one image per character),
`test/item01.png` ... `item20.png` and `class_labels.txt`, one line per test item,
`runNN/test/itemMM.png runNN/training/classKK.png` (paths relative to the folder
that holds the runs). A trial classifies one test item among its run's 20 training
images; the score is the error rate over the 400 trials.

Each trial is classified on its own: the model adapts on the run's 20 training
images as a 20-way 1-shot support set (that adaptation sees no test image), then
classifies the one test image, in a batch of the support set and itself where batch
statistics would otherwise let it see the other test images (`evaluate.predict_alone`).
Every PNG is converted exactly as the run's training images were: the Omniglot
importer's decoder (`data.omniglot.decode_png`) at the run's image size, then the
run's own preprocessing (ink polarity, channels, normalisation: `to_float`). A LEO
model, which learned on embeddings, sees the images through the backbone that made
them (`inputs.image_inputs`): the one a shipped LEO model carries, or the one `fewshot
embed` left beside a run's embeddings.
"""
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, precision
from .algorithms.base import Algorithm
from .config import Config
from .data.omniglot import decode_png
from .errors import FewshotError
from .evaluate import (check_answers_ways, confidence, describe_ensemble, describe_members, describe_shift,
                       ensemble_outputs, ensemble_runs, load_algorithm, meta_test_steps, trained_run)
from .inputs import ImageInputs, image_inputs

LABELS = "class_labels.txt"
WAYS = 20  # training images (characters) per published run, and test items
# Published error rates on these 20 runs, in percent: Lake, Salakhutdinov & Tenenbaum (2015),
# Science 350(6266), Fig. 3 and text (people, BPL, the deep convolutional network); Koch,
# Zemel & Salakhutdinov (2015), ICML deep learning workshop, Table 2 (92.0% correct)
PUBLISHED = (("people", 4.5, "Lake et al. 2015"),
             ("Bayesian Program Learning", 3.3, "Lake et al. 2015"),
             ("siamese network", 8.0, "Koch et al. 2015"),
             ("deep convolutional network", 13.5, "Lake et al. 2015"))
RUN = re.compile(r"^(?:(.*)/)?(run\d+)/" + re.escape(LABELS) + r"$")
FIX = "give all_runs.zip of brendenlake/omniglot (python/one-shot-classification/) or the folder it unzips to"


@dataclass
class LakeRun:
    """One run: the training images (one per character, in file-name order), the test
    images, and for each test image the index of its character's training image."""
    name: str
    training: list[np.ndarray]
    test: list[np.ndarray]
    answers: list[int]


class _Files:
    """The files of a zip or a folder, by their path relative to it ('/'-separated)."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
                self.names = set(self.zip.namelist())
            except (zipfile.BadZipFile, OSError) as error:
                raise FewshotError(f"{path} is not a readable zip file ({error}); {FIX}") from None
        elif path.is_dir():
            self.names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        else:
            raise FewshotError(f"{path} does not exist; {FIX}")

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(name) if self.zip else (self.path / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
            raise FewshotError(f"cannot read {self.path}:{name} ({error}); {FIX}") from None


def read_runs(path: str | Path, size: int) -> list[LakeRun]:
    """The runs under `path` (a zip or a folder), their images decoded at `size`; a
    malformed run (a missing image, a line naming a file that is not there, a number
    of characters other than 20) is refused in one line that names it."""
    path = Path(path)
    files = _Files(path)
    found = sorted((m.group(1) or "", m.group(2)) for name in files.names if (m := RUN.match(name)))
    if not found:
        raise FewshotError(f"{path} holds no Lake runs (runNN/{LABELS}); {FIX}")
    return [_read_run(files, root, name, size) for root, name in found]


def _read_run(files: _Files, root: str, name: str, size: int) -> LakeRun:
    prefix = f"{root}/" if root else ""
    where = f"{files.path}:{prefix}{name}" if files.zip else str(files.path / prefix / name)
    training = sorted(n for n in files.names if re.fullmatch(re.escape(f"{prefix}{name}/training/") + r"[^/]+\.png", n))
    if len(training) != WAYS:
        raise FewshotError(f"run {where} has {len(training)} training images (characters), a Lake run has "
                           f"{WAYS}; {FIX}")
    try:
        lines = [line.split() for line in files.read(f"{prefix}{name}/{LABELS}").decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise FewshotError(f"{where}/{LABELS} is not text; {FIX}") from None
    tests, answers = [], []
    for number, fields in enumerate(lines, 1):
        if len(fields) != 2:
            raise FewshotError(f"line {number} of {where}/{LABELS} is not 'TEST_IMAGE TRAINING_IMAGE' "
                               f"(runNN/test/itemMM.png runNN/training/classKK.png); {FIX}")
        test, answer = (prefix + field for field in fields)
        for named in (test, answer):
            if named not in files.names:
                raise FewshotError(f"line {number} of {where}/{LABELS} names {named[len(prefix):]}, which is not "
                                   f"there; {FIX}")
        if answer not in training:
            raise FewshotError(f"line {number} of {where}/{LABELS} names {answer[len(prefix):]} as a training "
                               f"image, but it is not in {name}/training/; {FIX}")
        tests.append(test)
        answers.append(training.index(answer))
    if len(tests) != WAYS or len(set(tests)) != WAYS or len(set(answers)) != WAYS:
        raise FewshotError(f"{where}/{LABELS} pairs {len(set(tests))} distinct test images with "
                           f"{len(set(answers))} distinct training images in {len(tests)} lines; a Lake run pairs "
                           f"each of its {WAYS} test images with one of its {WAYS} training images; {FIX}")
    order = sorted(range(WAYS), key=lambda i: tests[i])
    decode = lambda name: decode_png(files.read(name), size, f"{files.path}:{name}" if files.zip else name)  # noqa: E731
    return LakeRun(name, [decode(n) for n in training], [decode(tests[i]) for i in order],
                   [answers[i] for i in order])


def classify_run(algorithm: Algorithm | Sequence[Algorithm], inputs: ImageInputs, run: LakeRun,
                 steps: int | None = None, lr: float | None = None, shift: int = 0) -> torch.Tensor:
    """The outputs (test image x training image) of one run: adapted once on the training
    images as a 20-way 1-shot support set (`steps` inner steps, by default the algorithm's
    meta-test ones), each test image classified on its own; `shift`: test-time augmentation
    by shifts (eval_shift, `evaluate.meta_test_outputs`). Several algorithms: an ensemble
    (`evaluate.ensemble_outputs`), each trial still on its own in each."""
    members = [algorithm] if isinstance(algorithm, Algorithm) else algorithm
    support_x = inputs(np.stack(run.training)[:, None])
    support_y = torch.arange(len(run.training), device=support_x.device)
    query_x = inputs(np.stack(run.test)[:, None])
    return ensemble_outputs(members, support_x, support_y, query_x, steps, lr, alone=True, shift=shift)


def evaluate_lake(target: str | Path, lake: str | Path, steps: int | None = None, lr: float | None = None,
                  device: str | torch.device | None = "cpu", progress: bool = True, shift: int | None = None,
                  ensemble: Sequence[str | Path] = ()) -> dict:
    """Error of a trained run (folder or checkpoint) on Lake's runs at `lake` (a zip or a
    folder): per run and overall with a 95% interval, each trial classified on its own, in
    the arithmetic the run validated in. Inner `steps`, `lr` and `shift` as `fewshot eval`
    takes them; `ensemble`: other runs scored together with it, as `fewshot eval` does."""
    state, config, device = trained_run(target, steps, lr, device, shift=shift)
    trained = ensemble_runs(target, state, config, ensemble, steps, lr, shift)
    members = [load_algorithm(member_state, device).eval() for _, member_state, _ in trained]
    for (name, _, member_config), member in zip(trained, members):
        check_classifies_lake(name, member, member_config)
    algorithm = members[0]
    inputs = image_inputs(state, device)
    runs = read_runs(lake, inputs.size)
    results, errors = [], []
    with precision.configured(config.precision, device):
        for run in tqdm(runs, desc="Lake runs", unit="run", disable=not progress, leave=False):
            outputs = classify_run(members, inputs, run, steps, lr, config.eval_shift)
            predicted = outputs.argmax(1).cpu().tolist()
            wrong = [p != a for p, a in zip(predicted, run.answers)]
            errors += wrong
            results.append({"run": run.name, "errors": sum(wrong), "trials": len(wrong),
                            "error": sum(wrong) / len(wrong), "predicted": predicted, "answers": run.answers})
    error, ci95 = confidence(errors)
    own_steps = meta_test_steps(algorithm, config)
    result = {"checkpoint": str(checkpoint.find(target)), "step": state["step"], "preset": config.preset,
              "algorithm": config.algorithm, "lake": str(lake),
              "inner_steps": own_steps, "inner_lr": algorithm.describe_inner_lr() if lr is None else lr,
              "adaptation": algorithm.describe_adaptation(own_steps, lr) + describe_shift(config.eval_shift),
              "shift": config.eval_shift, "device": str(device),
              "error": error, "ci95": ci95, "errors": sum(errors), "trials": len(errors), "runs": results,
              "published": [{"model": m, "error": e / 100, "source": s} for m, e, s in PUBLISHED]}
    if ensemble:
        result["members"] = describe_members(trained, members, steps, lr)
    return result


def check_classifies_lake(target: str | Path, algorithm: Algorithm, config: Config) -> None:
    """Refuse a run that cannot classify a Lake trial: a regression run, a fixed output
    layer of other than 20 classes."""
    if algorithm.family.metric_name != "accuracy":
        raise FewshotError(f"{target} is a regression run ({config.preset}); Lake's runs need a classifier "
                           f"trained on images")
    check_answers_ways(target, algorithm, WAYS, "a Lake trial is",
                       f"train a {WAYS}-way model instead (e.g. `fewshot train lake-anil`, or --set ways={WAYS}), or a "
                       f"ProtoNet (any number of ways)")


def describe_lake(result: dict) -> str:
    lines = [f"{result['preset']} step {result['step']} on the {len(result['runs'])} Lake runs of {result['lake']}: "
             f"error {100 * result['error']:.2f}% +- {100 * result['ci95']:.2f}% (95% CI, {result['errors']} of "
             f"{result['trials']} trials wrong, each classified on its own{describe_shift(result['shift'])})"]
    lines += describe_ensemble(result)
    lines += [f"  {r['run']}: {r['errors']:2d} of {r['trials']} wrong ({100 * r['error']:.1f}%)" for r in result["runs"]]
    lines.append("published error on these 20 runs: " +
                 ", ".join(f"{p['model']} {100 * p['error']:.1f}% ({p['source']})" for p in result["published"]))
    return "\n".join(lines)


__all__ = ["LakeRun", "PUBLISHED", "classify_run", "describe_lake", "evaluate_lake", "read_runs"]
