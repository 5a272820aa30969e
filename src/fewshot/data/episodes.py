"""N-way K-shot episodes.

Every task batch is a pure function of (seed, batch index): a resumed run sees
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

    def to(self, device):
        return Task(*(t.to(device, non_blocking=True) for t in
                      (self.support_x, self.support_y, self.query_x, self.query_y)))

    @property
    def images(self):
        return len(self.support_x) + len(self.query_x)


def to_float(pixels, invert, dtype=torch.float32):
    """uint8 pixels -> [0, 1]; Omniglot is inverted so that ink is 1, as in the reference code."""
    x = torch.from_numpy(pixels).to(dtype) / 255.0
    return 1.0 - x if invert else x


class EpisodeSampler:
    """Samples `ways` classes without repetition, `shots` support and `query` query
    images of each, disjoint, with labels shuffled per task."""

    def __init__(self, images, classes, ways, shots, query, seed, split="train",
                 invert=False, dtype=torch.float32):
        if ways > len(classes):
            raise FewshotError(f"{ways}-way tasks need {ways} classes but the {split} split has "
                               f"{len(classes)}; lower ways (--set ways=N) or use more data")
        need = shots + query
        smallest = min(range(len(classes)), key=lambda i: classes[i][1])
        if classes[smallest][1] < need:
            raise FewshotError(f"{shots}-shot tasks with {query} queries need {need} images per class, but "
                               f"a class of the {split} split has {classes[smallest][1]}; lower shots or query")
        self.images = images
        self.classes = classes
        self.ways, self.shots, self.query = ways, shots, query
        self.seed, self.invert, self.dtype = seed, invert, dtype

    def task(self, rng):
        chosen = rng.choice(len(self.classes), self.ways, replace=False)
        labels = rng.permutation(self.ways)
        per_class = self.shots + self.query
        rows, rotations = [], []
        for c in chosen:
            start, count, rotation = self.classes[c]
            rows.append(start + rng.choice(count, per_class, replace=False))
            rotations.append(rotation)
        pixels = self.images[np.concatenate(rows)]  # ways*per_class x C x H x W
        pixels = pixels.reshape(self.ways, per_class, *pixels.shape[1:])
        for i, rotation in enumerate(rotations):
            if rotation:
                pixels[i] = np.rot90(pixels[i], rotation, axes=(-2, -1)).copy()
        x = to_float(np.ascontiguousarray(pixels), self.invert, self.dtype)
        y = torch.from_numpy(labels).long()[:, None].expand(self.ways, per_class)
        return Task(x[:, :self.shots].flatten(0, 1), y[:, :self.shots].flatten(),
                    x[:, self.shots:].flatten(0, 1), y[:, self.shots:].flatten())

    def batch(self, index, size):
        rng = np.random.default_rng([self.seed, index])
        return [self.task(rng) for _ in range(size)]


class Prefetcher:
    """Samples batches `start, start+1, ...` on a background thread so that the
    trainer never waits for sampling."""

    def __init__(self, sampler, start, stop, size, depth=4):
        self.queue = queue.Queue(maxsize=depth)
        self.stop_event = threading.Event()

        def work():
            try:
                for index in range(start, stop):
                    item = sampler.batch(index, size)
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
        self.stop_event.set()
