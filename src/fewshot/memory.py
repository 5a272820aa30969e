"""What the machine can hold. A network and a batch are sized on torch's "meta" device
(shapes only, nothing allocated) and refused, before anything is allocated or written,
when they need more than the memory of the device they would run on.

The estimates are lower bounds (the weights with their gradients and Adam's two moments;
each layer's output for every input of a batch, and as much again for its gradient), so
a refusal is certain to be right; what passes may still run short of memory, and then
says so at its first step.
"""
import math
import os

import torch

from . import algorithms
from .config import Config
from .errors import FewshotError

FLOAT = 4  # bytes


def device_bytes(device: str | torch.device) -> int | None:
    """The memory of `device` in bytes (None where unknown)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def sizes(config: Config) -> tuple[int, int]:
    """(parameters of the algorithm, values each input leaves in the network's layers)."""
    from .summary import example_input
    with torch.device("meta"):
        algorithm = algorithms.build(config).eval()  # the shapes are the same in either mode
        two = example_input(config)[:2]  # two: batch norm in training mode needs more than one value
        rows = algorithm.model.summary_rows(two)
    return (sum(p.numel() for p in algorithm.parameters()),
            -(-sum(math.prod(shape) for _, shape, _ in rows) // len(two)))


def check(needed: int, device: str | torch.device, what: str, fix: str) -> None:
    """Refuse `what` (needing `needed` bytes at least) where `device` has less memory."""
    have = device_bytes(device)
    if have is not None and needed > have:
        raise FewshotError(f"{what} needs {gigabytes(needed)} at least, more than the {gigabytes(have)} of "
                           f"{torch.device(device)}; {fix}")


def gigabytes(count: int) -> str:
    return f"{count / 2 ** 30:,.1f} GB"


def check_training(config: Config, device: str | torch.device) -> None:
    """The weights (with gradients and Adam's moments) and one task's forward pass must fit."""
    parameters, per_input = sizes(config)
    task = config.ways * (config.shots + max(config.query, config.eval_query or 0))
    needed = FLOAT * (4 * parameters + 2 * task * per_input)
    check(needed, device, f"a {config.model} network of {parameters:,} parameters with one {config.ways}-way "
          f"task of {task} inputs", "choose smaller sizes (image_size, filters, widths, hidden, ways, shots, "
          "query) or a device with more memory")


def check_batch(config: Config, batch: int, device: str | torch.device, option: str = "--batch-size") -> None:
    """A supervised batch of `batch` inputs, forward and backward, with the weights."""
    parameters, per_input = sizes(config)
    needed = FLOAT * (4 * parameters + 2 * batch * per_input)
    largest = max(1, (device_bytes(device) or needed) // FLOAT // 2 // max(per_input, 1) // 2)
    check(needed, device, f"{option} {batch} of {config.image_size}x{config.image_size} images through "
          f"{config.model}", f"use {option} {min(largest, batch - 1)} or less")
