"""Numeric precision of the meta-step: the `precision` config key.

    configure(precision: str, device: torch.device) -> None
        Set the process-wide backend flags for `precision`, once before training.
    autocast(precision: str, device: torch.device) -> ContextManager
        The context a meta-step runs in: bfloat16 autocast for bf16, else a no-op.
    configured(precision: str, device: torch.device) -> ContextManager
        configure() for a block, the flags put back as they were after it: what
        `fewshot eval`, `predict` (fewshot.load) and `embed` run their networks in.

The trainer does, in this order:

    precision.configure(config.precision, device)
    ...
    with precision.autocast(config.precision, device):
        result = step(tasks, step_index)          # algorithm.meta_gradient or compiled.compile_step(...)

The whole meta-step goes inside the context, backward calls included: in MAML the
inner loop's gradients are themselves part of the forward pass of the
meta-objective, so there is no autocast-free backward to split off. Validation
runs between meta-steps: under the configured flags, outside autocast. Evaluation,
prediction and embedding do the same (`configured`), so a run is tested in the
arithmetic it was validated in; as library calls in a caller's process they put the
flags back afterwards.

  fp32  float32 everywhere. On CUDA this also turns TF32 off for convolutions
        (`torch.backends.cudnn.allow_tf32`, which PyTorch leaves on by default) and
        for matmuls, so fp32 means float32 arithmetic. The default.
  tf32  CUDA matmuls and convolutions take TensorFloat-32 inputs (10-bit
        mantissa, float32 accumulation): `torch.backends.cuda.matmul.allow_tf32`
        and `torch.backends.cudnn.allow_tf32`. The CPU has no TF32: there `tf32`
        changes nothing and the step is plain float32.
  bf16  the step runs under `torch.autocast(device.type, dtype=torch.bfloat16)`:
        convolutions and matmuls take bfloat16 inputs (8-bit significand),
        reductions, softmax and the loss stay in float32, and so do the
        parameters, their gradients and the optimizer. CPU autocast works too,
        but is only faster on CPUs with bfloat16 instructions (AVX512-BF16/AMX).

Unknown values are refused by `fewshot.config.validate` before any work starts;
these functions refuse them too, with the same one line.
"""
import contextlib
from typing import ContextManager, Iterator

import torch

from .errors import FewshotError

PRECISIONS = ("fp32", "tf32", "bf16")


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise FewshotError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def configure(precision: str, device: torch.device) -> None:
    """Set the global backend flags for `precision` on `device`. On CUDA, TF32 is on
    for tf32 and off otherwise (bf16's autocast casts its own inputs; what autocast
    leaves in float32 stays float32). On the CPU nothing is set: the flags only
    reach CUDA kernels."""
    _check(precision)
    if torch.device(device).type == "cuda":
        use_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = use_tf32
        torch.backends.cudnn.allow_tf32 = use_tf32


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def configured(precision: str, device: torch.device) -> Iterator[None]:
    """configure(precision, device) for the block: the arithmetic of the run's validation
    (flags, no autocast), with the flags as they were restored on leaving it."""
    saved = _flags()
    try:
        configure(precision, device)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(precision: str, device: torch.device) -> ContextManager:
    """bfloat16 autocast on `device`'s type for bf16; a no-op context for fp32 and tf32
    (whose arithmetic is decided by `configure`'s flags, not per region)."""
    _check(precision)
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
