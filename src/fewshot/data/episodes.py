"""N-way K-shot episodes.

Every task is a pure function of (seed, batch index, position): a resumed run sees
exactly the tasks an uninterrupted one would, and evaluation sees a fixed set.

Sampling is split in two: a task's *plan* (which classes, which rows, which
rotations, which labels) is drawn on the host by that task's own numpy generator,
and the pixels of a whole batch are built from the plans in one pass
(`DeviceEpisodes`), on the host or on an accelerator that holds the whole dataset
as uint8: the same tasks from the same plans.
"""
import queue
import threading
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FewshotError
from .images import ImageClass

if TYPE_CHECKING:
    from .sinusoid import SinusoidSampler


@dataclass
class Task:
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    seed: tuple = None  # (seed, batch index, position) of a sampled task: its own random draws (LEO)

    def to(self, device: str | torch.device) -> "Task":
        return Task(*(t.to(device, non_blocking=True) for t in
                      (self.support_x, self.support_y, self.query_x, self.query_y)), seed=self.seed)

    def pin_memory(self) -> "Task":
        return Task(*(t.pin_memory() for t in (self.support_x, self.support_y, self.query_x, self.query_y)),
                    seed=self.seed)

    @property
    def images(self) -> int:
        return len(self.support_x) + len(self.query_x)


GRAY = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")


def to_float(pixels: np.ndarray, preprocessing: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (..., C, H, W) -> model input, as `preprocessing` says:
    `channels` (convert gray <-> RGB), `invert` (Omniglot: ink is 1, as in the
    reference code), `mean` / `std` (per channel, from the meta-train split).
    Float input (precomputed features, see embeddings.py) is returned unchanged."""
    return tensor_to_float(torch.from_numpy(pixels), preprocessing, dtype)


def tensor_to_float(pixels: torch.Tensor, preprocessing: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float32,
                    constants: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """`to_float` of a tensor, on the tensor's device (the same operations in the same
    order, so the host and an accelerator give the same numbers). `constants`: the
    gray weights, mean and std already on that device (`float_constants`), so that
    building a task copies nothing from the host."""
    if pixels.dtype.is_floating_point:
        return pixels.to(dtype)
    preprocessing = preprocessing or {}
    constants = constants or float_constants(preprocessing, dtype, pixels.device)
    x = pixels.to(dtype) / 255.0
    have, channels = x.shape[-3], preprocessing.get("channels")
    if channels is not None and channels != have:
        if have == 3 and channels == 1:
            x = (x * constants["gray"]).sum(-3, keepdim=True)
        elif have == 1:
            x = x.expand(*x.shape[:-3], channels, *x.shape[-2:])
        else:
            raise FewshotError(f"cannot turn {have}-channel images into {channels} channels")
    if preprocessing.get("invert"):
        x = 1.0 - x
    if constants.get("mean") is not None and len(constants["mean"]) == x.shape[-3]:
        x = (x - constants["mean"]) / constants["std"]
    return x


def float_constants(preprocessing: dict[str, Any] | None, dtype: torch.dtype,
                    device: torch.device) -> dict[str, torch.Tensor]:
    preprocessing = preprocessing or {}
    constants = {"gray": torch.tensor(GRAY, dtype=dtype, device=device).view(3, 1, 1)}
    if preprocessing.get("mean") is not None:
        constants["mean"] = torch.tensor(preprocessing["mean"], dtype=dtype, device=device).view(-1, 1, 1)
        constants["std"] = torch.tensor(preprocessing["std"], dtype=dtype, device=device).view(-1, 1, 1)
    return constants


@dataclass
class Plan:
    """One task's draws: `rows` (ways x per_class) of the image array, the quarter
    turns of each chosen class, each class's label, and with distortion each image's
    sampling map (ways x per_class x 2 x 3, `affine_maps`); `classes`, the chosen
    classes' indices in the split."""
    rows: np.ndarray
    rotations: np.ndarray
    labels: np.ndarray
    seed: tuple
    affine: np.ndarray | None = None
    classes: np.ndarray | None = None


# Koch, Zemel & Salakhutdinov 2015, section 3.2 ("Affine distortions"): each part kept with probability 1/2
DISTORTION_DEGREES = 10.0
DISTORTION_SHEAR = 0.3
DISTORTION_SCALE = (0.8, 1.2)
DISTORTION_SHIFT = 2 / 105  # their 2 pixels of a 105-pixel image, as a share of the side


def affine_maps(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` random distortions (Koch et al.: a rotation, shears along x and y, scales
    along x and y and shifts along x and y, each kept with probability 1/2), as the
    count x 2 x 3 maps `F.affine_grid` takes: from each output point to the input point
    it samples, in coordinates from -1 to 1 across the image. The draws are made in one
    fixed order whatever is kept, so that a task's distortions depend on its seed alone."""
    keep = rng.random((count, 7)) < 0.5
    angle = np.radians(rng.uniform(-DISTORTION_DEGREES, DISTORTION_DEGREES, count)) * keep[:, 0]
    shear = rng.uniform(-DISTORTION_SHEAR, DISTORTION_SHEAR, (count, 2)) * keep[:, 1:3]
    scale = np.where(keep[:, 3:5], rng.uniform(*DISTORTION_SCALE, (count, 2)), 1.0)
    shift = 2 * rng.uniform(-DISTORTION_SHIFT, DISTORTION_SHIFT, (count, 2)) * keep[:, 5:7]  # -1..1 spans 2
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shears = np.stack([np.stack([np.ones(count), shear[:, 0]], -1), np.stack([shear[:, 1], np.ones(count)], -1)], -2)
    forward = rotate @ shears @ (scale[:, :, None] * np.eye(2))  # where an input point lands: forward p + shift
    inverse = np.linalg.inv(forward)
    return np.concatenate([inverse, -(inverse @ shift[:, :, None])], -1)


def distort(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Images x (n, C, H, W) resampled through `maps` (n x 2 x 3, `affine_maps`),
    bilinearly; points outside take the nearest border pixel: background in Omniglot
    and, as every sample is a weighted mean, the same whether before or after
    normalisation."""
    grid = F.affine_grid(maps.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class EpisodeSampler:
    """Samples `ways` classes without repetition, `shots` support and `query` query
    images of each, disjoint, with labels shuffled per task. `classes`: the split's
    ImageClass list (rows start..start + count of `images`, turned `rotation` quarter turns).

    `alphabets` (one per class): a task's classes all come from one alphabet, drawn
    uniformly among those with `ways` classes or more. `same_drawers`: the support and
    query images sit at the same positions (Omniglot: the same drawers) in every class
    of a task, so that, as in Lake et al.'s runs, one person drew all the support
    images and another all the queries. `alone`: at evaluation each query is
    classified on its own (evaluate.py reads it). `distort`: each image through its own
    random affine map (`affine_maps`), drawn after the rest of its task."""

    def __init__(self, images: np.ndarray, classes: Sequence[ImageClass], ways: int, shots: int, query: int, seed: int,
                 split: str = "train", preprocessing: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                 alphabets: Sequence[Hashable] | None = None, same_drawers: bool = False, alone: bool = False,
                 distort: bool = False) -> None:
        if ways > len(classes):
            raise FewshotError(f"{ways}-way tasks need {ways} classes but the {split} split has "
                               f"{len(classes)}; lower ways (--set ways=N) or use more data")
        self.members = None  # with `alphabets`: the class indices of each alphabet that fits a task
        self.alphabets = None if alphabets is None else list(alphabets)
        if alphabets is not None:
            grouped = {}
            for index, name in enumerate(alphabets):
                grouped.setdefault(name, []).append(index)
            self.members = [np.array(m) for m in grouped.values() if len(m) >= ways]
            if not self.members:
                largest = max(len(m) for m in grouped.values())
                raise FewshotError(f"{ways}-way tasks within one alphabet need an alphabet of {ways} characters, "
                                   f"but the largest of the {split} split has {largest}; lower the ways "
                                   f"(--set ways=N, eval_ways=N) to {largest} or less")
        need = shots + query
        fewest = min(classes, key=lambda c: c.count)
        if fewest.count < need:
            raise FewshotError(f"{shots}-shot tasks with {query} queries need {need} images per class, but "
                               f"class {fewest.name!r} of the {split} split has {fewest.count}; lower shots or "
                               f"query, or add images to that class")
        self.images = images
        self.classes = classes
        self.ways, self.shots, self.query = ways, shots, query
        self.seed, self.preprocessing, self.dtype = seed, preprocessing, dtype
        self.same_drawers, self.alone, self.distort = same_drawers, alone, distort
        self.host = None  # the batched builder on the host, made on first use

    def plan(self, rng: np.random.Generator, seed: tuple[int, int, int] | None = None) -> Plan:
        if self.members is None:
            chosen = rng.choice(len(self.classes), self.ways, replace=False)
        else:
            members = self.members[rng.integers(len(self.members))]
            chosen = members[rng.choice(len(members), self.ways, replace=False)]
        labels = rng.permutation(self.ways)
        per_class = self.shots + self.query
        if self.same_drawers:  # support images first: the first `shots` positions are the support drawers
            positions = rng.choice(min(self.classes[c].count for c in chosen), per_class, replace=False)
        rows, rotations = [], []
        for c in chosen:
            image_class = self.classes[c]
            if self.same_drawers:
                rows.append(image_class.start + positions)
            else:
                rows.append(image_class.start + rng.choice(image_class.count, per_class, replace=False))
            rotations.append(image_class.rotation)
        affine = affine_maps(rng, self.ways * per_class).reshape(self.ways, per_class, 2, 3) if self.distort else None
        return Plan(np.stack(rows), np.array(rotations, dtype=np.int64), labels, seed, affine, chosen)

    def plans(self, index: int, size: int, part: Sequence[int] | None = None) -> list[Plan]:
        positions = range(size) if part is None else part
        return [self.plan(np.random.default_rng([self.seed, index, j]), (self.seed, index, j)) for j in positions]

    def alphabet_of(self, index: int) -> Hashable | None:
        """The alphabet of batch `index`'s first task where tasks are drawn within one
        alphabet (evaluation draws one task a batch), else None."""
        if self.alphabets is None:
            return None
        return self.alphabets[self.plans(index, 1)[0].classes[0]]

    def batch(self, index: int, size: int, part: Sequence[int] | None = None) -> list[Task]:
        """Tasks `part` (default: all) of batch `index`, built together on the host. Task j
        of a batch has its own generator, seeded by (seed, index, j), so a process that
        samples only its share of the batch gets the very tasks a single process would."""
        if self.host is None:
            self.host = DeviceEpisodes(self, "cpu")
        return self.host.batch(index, size, part)


class DeviceEpisodes:
    """`sampler`'s tasks, built on `device` from its image array copied there once as
    uint8: the host draws only the plans (the same generators, so the same tasks),
    and the gather, rotation, conversion to float and normalisation of a whole
    meta-batch run on the device, after one small non-blocking copy of the indices.
    On the CPU the array is used in place (no copy): `EpisodeSampler.batch` builds
    its batches this way."""

    def __init__(self, sampler: EpisodeSampler, device: str | torch.device, images: torch.Tensor | None = None) -> None:
        """`images`: the device copy of `sampler.images` another DeviceEpisodes already holds."""
        self.sampler, self.device, self.seed = sampler, torch.device(device), sampler.seed
        if images is None:
            with warnings.catch_warnings():  # a read-only (memory-mapped) array: only read, never written
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                images = torch.from_numpy(np.ascontiguousarray(sampler.images)).to(self.device)
        self.images = images
        self.constants = float_constants(sampler.preprocessing, sampler.dtype, self.device)
        self.alone = sampler.alone

    @staticmethod
    def fits(sampler: EpisodeSampler, device: str | torch.device, share: float = 0.5) -> bool:
        """Whether the image array takes at most `share` of the device's free memory."""
        device = torch.device(device)
        if device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(device)
        return sampler.images.nbytes <= share * free

    def plans(self, index: int, size: int, part: Sequence[int] | None = None) -> list[Plan]:
        return self.sampler.plans(index, size, part)

    def alphabet_of(self, index: int) -> Hashable | None:
        return self.sampler.alphabet_of(index)

    def build(self, plans: Sequence[Plan]) -> list[Task]:
        """No host synchronisation: the indices travel in one pinned, non-blocking copy,
        and the rotations are selected on the device."""
        sampler = self.sampler
        ways, per_class = plans[0].rows.shape
        # rows, labels and quarter turns of every task in one host array
        indices = torch.from_numpy(np.stack([np.concatenate([p.rows.reshape(-1), p.labels, p.rotations])
                                             for p in plans]))
        if self.device.type == "cuda":
            indices = indices.pin_memory()
        indices = indices.to(self.device, non_blocking=True)
        rows = indices[:, :ways * per_class]
        labels, rotations = indices[:, ways * per_class:-ways], indices[:, -ways:]
        pixels = self.images[rows.reshape(-1)].view(len(plans), ways, per_class, *self.images.shape[1:])
        turned = pixels
        for turns in sorted(set(np.concatenate([p.rotations for p in plans]).tolist()) - {0}):  # known on the host
            chosen = (rotations == turns).view(len(plans), ways, *[1] * (pixels.dim() - 2))
            turned = torch.where(chosen, torch.rot90(pixels, turns, (-2, -1)), turned)
        x = tensor_to_float(turned, sampler.preprocessing, sampler.dtype, self.constants)
        if plans[0].affine is not None:
            maps = torch.from_numpy(np.stack([p.affine for p in plans])).to(self.device, non_blocking=True)
            x = distort(x.flatten(0, 2), maps.flatten(0, 2)).view_as(x)
        y = labels[:, :, None].expand(len(plans), ways, per_class)
        shots = sampler.shots
        return [Task(x[i, :, :shots].flatten(0, 1), y[i, :, :shots].flatten(),
                     x[i, :, shots:].flatten(0, 1), y[i, :, shots:].flatten(), seed=p.seed)
                for i, p in enumerate(plans)]

    def batch(self, index: int, size: int, part: Sequence[int] | None = None) -> list[Task]:
        return self.build(self.plans(index, size, part))


class Prefetcher:
    """Samples batches `start, start+1, ...` on a background thread so that the
    trainer never waits for sampling. For `DeviceEpisodes` the thread draws the
    plans and `next` builds them on the device; `pin` pins host batches so that
    their copy to an accelerator does not block."""

    def __init__(self, sampler: "EpisodeSampler | DeviceEpisodes | SinusoidSampler", start: int, stop: int, size: int,
                 part: Sequence[int] | None = None, depth: int = 4, pin: bool = False) -> None:
        self.queue = queue.Queue(maxsize=depth)
        self.stop_event = threading.Event()
        self.build = sampler.build if isinstance(sampler, DeviceEpisodes) else None
        produce = sampler.plans if self.build else sampler.batch

        def work():
            try:
                for index in range(start, stop):
                    item = produce(index, size, part)
                    if pin:
                        item = [t.pin_memory() for t in item]
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

    def __next__(self) -> list[Task]:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return self.build(item) if self.build else item

    def close(self) -> None:
        """Stop the sampling thread and wait for it, so no thread outlives the run."""
        self.stop_event.set()
        self.thread.join(timeout=10)
