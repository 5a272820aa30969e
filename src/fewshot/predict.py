"""Apply a trained checkpoint to new classes: adapt on a few labelled examples,
then classify new images.

    learner = fewshot.load("runs/omniglot-5w1s")
    adapted = learner.adapt("support/")          # <class>/<image> folders
    adapted.classify(["query/a.png", "query/b.png"], top_k=3)

Each image gets the answer it would get on its own, whatever else is in the call.
With transductive batch norm (batch statistics at test, the default of the
presets) an image is normalized together with the support set, one image at a
time: the batch is the support images plus that image, as Reptile's
non-transductive evaluation does. `transductive=True` is the meta-test protocol of
`fewshot eval`: all the images of one call in one batch, so that each answer
depends on the others. With inductive batch norm (running statistics) and
networks without batch norm both are the same.
"""
import os
from collections.abc import Iterable
from pathlib import Path
from typing import ContextManager

import numpy as np
import torch

from . import checkpoint, precision
from .config import meta_test
from .data.folder import image_files, load_image
from .device import choose_device
from .errors import FewshotError
from .evaluate import asked_settings, depends_on_the_batch, load_algorithm, predict_alone, shift_averaged, shifted_support
from .inputs import ImageInputs, image_inputs


class Learner:
    """A trained checkpoint, ready to adapt to new tasks."""

    def __init__(self, state: dict, device: str | torch.device | None = "cpu") -> None:
        self.config = state["config"]
        self.preprocessing = state.get("preprocessing")
        self.device = device if isinstance(device, torch.device) else choose_device(device)[0]
        self.algorithm = load_algorithm(state, self.device).eval()
        self.step = state["step"]
        self.state = state
        self._inputs: ImageInputs | None = None

    def images(self, paths: list[str | Path]) -> torch.Tensor:
        """Image files -> the model's input, converted as at training time (for a LEO
        model: the embeddings of its image backbone, `inputs.image_inputs`)."""
        if self._inputs is None:
            self._inputs = image_inputs(self.state, self.device)
        pixels = np.stack([load_image(p, self._inputs.size, self._inputs.channels) for p in paths])
        return self._inputs(pixels)

    def adapt(self, support: str | Path | torch.Tensor, labels: torch.Tensor | None = None,
              classes: list[str] | None = None, steps: int | None = None, lr: float | None = None,
              shift: int | None = None) -> "Adapted":
        """`support` is a folder of class folders, or a tensor of inputs with `labels`; `steps`,
        `lr` and `shift` replace the checkpoint's meta-test inner steps, rate and test-time
        shifts (eval_shift: `evaluate.meta_test_outputs`)."""
        asked = asked_settings(steps, shift=shift)
        if isinstance(support, (str, Path)):
            support, labels, classes = self.read_support(support)
        support, labels = support.to(self.device), labels.to(self.device)
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1)] if labels.dtype == torch.long else None
        ways = self.config.ways
        if classes is not None and not getattr(self.algorithm, "any_number_of_classes", False) and len(classes) != ways:
            raise FewshotError(f"the support set has {len(classes)} classes, but this checkpoint's model is "
                               f"{ways}-way; give exactly {ways} class folders (or train a {len(classes)}-way model)")
        # refused where the run's eval_inner_steps would be (e.g. MAML++ beyond its rates), and a rate where
        # there is no inner loop
        shift = meta_test(self.config, lr, **asked).eval_shift
        support, labels = shifted_support(support, labels, shift)
        with self.arithmetic():
            adapted = self.algorithm.adapt(support, labels, steps, lr)
        return Adapted(self, adapted, classes, support, shift)

    def arithmetic(self) -> ContextManager[None]:
        """The run's precision, as its validation ran (precision.configured)."""
        return precision.configured(self.config.precision, self.device)

    def read_support(self, folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        folder = Path(folder)
        if not folder.is_dir():
            raise FewshotError(f"support set {folder} is not a folder; give <DIR>/<class>/<image>")
        class_dirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and image_files(d)]
        if not class_dirs:
            raise FewshotError(f"support set {folder} holds no class folders with images; give <DIR>/<class>/<image>")
        paths, labels = [], []
        for label, class_dir in enumerate(class_dirs):
            files = image_files(class_dir)
            paths += files
            labels += [label] * len(files)
        return self.images(paths), torch.tensor(labels), [printable(d.name) for d in class_dirs]


class Adapted:
    """A learner adapted to one support set."""

    def __init__(self, learner: Learner, state: dict, classes: list[str], support_x: torch.Tensor,
                 shift: int = 0) -> None:
        self.learner, self.state, self.classes, self.support_x = learner, state, classes, support_x
        self.shift = shift  # each input's outputs averaged over its copies shifted by up to this many pixels

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, transductive: bool = False) -> torch.Tensor:
        """The algorithm's outputs (logits for classification) for a batch of inputs;
        see the module docstring for `transductive`."""
        algorithm = self.learner.algorithm
        x = x.to(self.learner.device)
        with self.learner.arithmetic():
            if transductive:
                return shift_averaged(lambda copy: algorithm.predict(self.state, copy), x, self.shift)
            return shift_averaged(lambda copy: predict_alone(algorithm, self.state, self.support_x, copy), x,
                                  self.shift, together=not depends_on_the_batch(algorithm))

    def predict(self, x: torch.Tensor, transductive: bool = False) -> torch.Tensor:
        """Model outputs for a batch of inputs (class probabilities for classification),
        each input's as it would be on its own; `transductive=True` normalizes the batch
        as one, as at meta-test, so that each answer depends on the other inputs."""
        outputs = self.outputs(x, transductive)
        if self.learner.algorithm.family.metric_name == "accuracy":
            return torch.softmax(outputs, dim=1)
        return outputs

    def classify(self, queries: Iterable[str | Path], top_k: int = 1, transductive: bool = False) -> list[dict]:
        """Image files or folders -> one prediction dict per image file."""
        files = query_files(queries)
        probabilities = self.predict(self.learner.images(files), transductive).cpu()
        rows = []
        for file, p in zip(files, probabilities):
            order = torch.argsort(p, descending=True).tolist()
            rows.append({"file": printable(str(file)), "label": self.classes[order[0]],
                         "probability": p[order[0]].item(),
                         "top": [(self.classes[i], p[i].item()) for i in order[:top_k]],
                         "probabilities": {c: p[i].item() for i, c in enumerate(self.classes)}})
        return rows


def printable(name: str) -> str:
    """A file name as text that prints and writes as UTF-8: bytes of the name that
    are not UTF-8 (which Python holds as surrogates) become \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def query_files(queries: Iterable[str | Path]) -> list[Path]:
    files = []
    for query in map(Path, queries):
        if query.is_dir():
            found = image_files(query)
            if not found:
                raise FewshotError(f"query folder {printable(str(query))} holds no images")
            files += found
        elif query.is_file():
            files.append(query)
        else:
            raise FewshotError(f"query {printable(str(query))} does not exist; give image files or folders of images")
    return files


def load(target: str | Path, device: str | torch.device | None = "cpu") -> Learner:
    """A checkpoint file or run folder -> a Learner on `device` (None: the best present)."""
    return Learner(checkpoint.load(target, run=True), device)
