"""Apply a trained checkpoint to new classes: adapt on a few labelled examples,
then classify new images.

    learner = fewshot.load("runs/omniglot-5w1s")
    adapted = learner.adapt("support/")          # <class>/<image> folders
    adapted.classify(["query/a.png", "query/b.png"], top_k=3)
"""
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .data.episodes import to_float
from .data.folder import image_files, load_image
from .errors import FewshotError
from .evaluate import load_algorithm


class Learner:
    """A trained checkpoint, ready to adapt to new tasks."""

    def __init__(self, state, device="cpu"):
        self.config = state["config"]
        self.preprocessing = state.get("preprocessing")
        self.device = torch.device(device)
        self.algorithm = load_algorithm(state, self.device).eval()
        self.step = state["step"]

    def images(self, paths):
        """Image files -> the model's input, converted as at training time."""
        if self.preprocessing is None:
            raise FewshotError("this checkpoint was not trained on images; pass tensors to adapt() and predict()")
        size, channels = self.preprocessing["size"], self.preprocessing["channels"]
        pixels = np.stack([load_image(p, size, channels) for p in paths])
        return to_float(pixels, self.preprocessing).to(self.device)

    def adapt(self, support, labels=None, classes=None, steps=None, lr=None):
        """`support` is a folder of class folders, or a tensor of inputs with `labels`."""
        if isinstance(support, (str, Path)):
            support, labels, classes = self.read_support(support)
        support, labels = support.to(self.device), labels.to(self.device)
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1)] if labels.dtype == torch.long else None
        ways = self.config["ways"]
        if classes is not None and not getattr(self.algorithm, "any_number_of_classes", False) and len(classes) != ways:
            raise FewshotError(f"the support set has {len(classes)} classes, but this checkpoint's model is "
                               f"{ways}-way; give exactly {ways} class folders (or train a {len(classes)}-way model)")
        adapted = self.algorithm.adapt(support, labels, steps, lr)
        return Adapted(self, adapted, classes)

    def read_support(self, folder):
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
        return self.images(paths), torch.tensor(labels), [d.name for d in class_dirs]


class Adapted:
    """A learner adapted to one support set."""

    def __init__(self, learner, state, classes):
        self.learner, self.state, self.classes = learner, state, classes

    def predict(self, x):
        """Model outputs for a batch of inputs (class probabilities for classification).
        With transductive batch norm, the batch is normalized as one, as at meta-test."""
        outputs = self.learner.algorithm.predict(self.state, x.to(self.learner.device))
        if self.learner.algorithm.family.metric_name == "accuracy":
            return torch.softmax(outputs, dim=1)
        return outputs

    def classify(self, queries, top_k=1):
        """Image files or folders -> one prediction dict per image file."""
        files = query_files(queries)
        probabilities = self.predict(self.learner.images(files)).cpu()
        rows = []
        for file, p in zip(files, probabilities):
            order = torch.argsort(p, descending=True).tolist()
            rows.append({"file": str(file), "label": self.classes[order[0]], "probability": p[order[0]].item(),
                         "top": [(self.classes[i], p[i].item()) for i in order[:top_k]],
                         "probabilities": {c: p[i].item() for i, c in enumerate(self.classes)}})
        return rows


def query_files(queries):
    files = []
    for query in map(Path, queries):
        if query.is_dir():
            found = image_files(query)
            if not found:
                raise FewshotError(f"query folder {query} holds no images")
            files += found
        elif query.is_file():
            files.append(query)
        else:
            raise FewshotError(f"query {query} does not exist; give image files or folders of images")
    return files


def load(target, device="cpu"):
    """A checkpoint file or run folder -> a Learner."""
    return Learner(checkpoint.load(target), device)
