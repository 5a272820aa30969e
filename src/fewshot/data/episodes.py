"""N-way K-shot episodes.

Every task is a pure function of (seed, batch index, position): a resumed run sees
exactly the tasks an uninterrupted one would, and evaluation sees a fixed set.
"""
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FewshotError


@dataclass
class Task:
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    seed: tuple = None  # (seed, batch index, position) of a sampled task: its own random draws (LEO)

    def to(self, device):
        return Task(*(t.to(device, non_blocking=True) for t in
                      (self.support_x, self.support_y, self.query_x, self.query_y)), seed=self.seed)

    @property
    def images(self):
        return len(self.support_x) + len(self.query_x)


GRAY = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")


def to_float(pixels, preprocessing=None, dtype=torch.float32):
    """uint8 pixels (..., C, H, W) -> model input, as `preprocessing` says:
    `channels` (convert gray <-> RGB), `invert` (Omniglot: ink is 1, as in the
    reference code), `mean` / `std` (per channel, from the meta-train split).
    Float input (precomputed features, see embeddings.py) is returned unchanged."""
    if pixels.dtype.kind == "f":
        return torch.from_numpy(pixels).to(dtype)
    preprocessing = preprocessing or {}
    x = torch.from_numpy(pixels).to(dtype) / 255.0
    have, channels = x.shape[-3], preprocessing.get("channels")
    if channels is not None and channels != have:
        if have == 3 and channels == 1:
            x = (x * torch.tensor(GRAY, dtype=dtype).view(3, 1, 1)).sum(-3, keepdim=True)
        elif have == 1:
            x = x.expand(*x.shape[:-3], channels, *x.shape[-2:])
        else:
            raise FewshotError(f"cannot turn {have}-channel images into {channels} channels")
    if preprocessing.get("invert"):
        x = 1.0 - x
    if preprocessing.get("mean") is not None and len(preprocessing["mean"]) == x.shape[-3]:
        mean = torch.tensor(preprocessing["mean"], dtype=dtype).view(-1, 1, 1)
        std = torch.tensor(preprocessing["std"], dtype=dtype).view(-1, 1, 1)
        x = (x - mean) / std
    return x


class EpisodeSampler:
    """Samples `ways` classes without repetition, `shots` support and `query` query
    images of each, disjoint, with labels shuffled per task. `classes` holds
    (first row, image count, rotation in quarter turns, name) per class."""

    def __init__(self, images, classes, ways, shots, query, seed, split="train",
                 preprocessing=None, dtype=torch.float32):
        if ways > len(classes):
            raise FewshotError(f"{ways}-way tasks need {ways} classes but the {split} split has "
                               f"{len(classes)}; lower ways (--set ways=N) or use more data")
        need = shots + query
        start, count, rotation, name = min(classes, key=lambda c: c[1])
        if count < need:
            raise FewshotError(f"{shots}-shot tasks with {query} queries need {need} images per class, but "
                               f"class {name!r} of the {split} split has {count}; lower shots or query, "
                               f"or add images to that class")
        self.images = images
        self.classes = classes
        self.ways, self.shots, self.query = ways, shots, query
        self.seed, self.preprocessing, self.dtype = seed, preprocessing, dtype

    def task(self, rng):
        chosen = rng.choice(len(self.classes), self.ways, replace=False)
        labels = rng.permutation(self.ways)
        per_class = self.shots + self.query
        rows, rotations = [], []
        for c in chosen:
            start, count, rotation, _ = self.classes[c]
            rows.append(start + rng.choice(count, per_class, replace=False))
            rotations.append(rotation)
        pixels = self.images[np.concatenate(rows)]  # ways*per_class x C x H x W
        pixels = pixels.reshape(self.ways, per_class, *pixels.shape[1:])
        for i, rotation in enumerate(rotations):
            if rotation:
                pixels[i] = np.rot90(pixels[i], rotation, axes=(-2, -1)).copy()
        x = to_float(np.ascontiguousarray(pixels), self.preprocessing, self.dtype)
        y = torch.from_numpy(labels).long()[:, None].expand(self.ways, per_class)
        return Task(x[:, :self.shots].flatten(0, 1), y[:, :self.shots].flatten(),
                    x[:, self.shots:].flatten(0, 1), y[:, self.shots:].flatten())

    def batch(self, index, size, part=None):
        return sample_batch(self, index, size, part)


def sample_batch(sampler, index, size, part=None):
    """Tasks `part` (default: all) of batch `index`. Task j of a batch has its own
    generator, seeded by (seed, index, j), so a process that samples only its share
    of the batch gets the very tasks a single process would."""
    positions = range(size) if part is None else part
    tasks = []
    for j in positions:
        task = sampler.task(np.random.default_rng([sampler.seed, index, j]))
        task.seed = (sampler.seed, index, j)
        tasks.append(task)
    return tasks


class Prefetcher:
    """Samples batches `start, start+1, ...` on a background thread so that the
    trainer never waits for sampling."""

    def __init__(self, sampler, start, stop, size, part=None, depth=4):
        self.queue = queue.Queue(maxsize=depth)
        self.stop_event = threading.Event()

        def work():
            try:
                for index in range(start, stop):
                    item = sampler.batch(index, size, part)
                    while not self.stop_event.is_set():
                        try:
                            self.queue.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self.stop_event.is_set():
                        return
            except BaseException as error:  # surfaced in the consumer
                self.queue.put(error)

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def __next__(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        """Stop the sampling thread and wait for it, so no thread outlives the run."""
        self.stop_event.set()
        self.thread.join(timeout=10)
