"""Where a command runs: the device it asked for, checked, or the best one present; and
its torch threads. Every command (`train`, `eval`, `predict`, `embed`) and its Python
call check these here, once, in the same words.

The best device is CUDA, then Apple's MPS where this PyTorch runs a meta-step's
operations there (a convolution, batch norm and a second derivative: `mps_runs_meta_steps`),
then the CPU.
"""
import os
import re

import torch

from .errors import FewshotError, whole_number
from .reading import reason

DEVICES = "cpu, cuda, cuda:N or mps"  # the accepted names, as help and refusals list them
VARIABLE = "FEWSHOT_DEVICE"  # where set, the device every command takes when --device is not given


def choose_device(name: str | None = None) -> tuple[torch.device, str | None]:
    """The torch device for `name` (cpu, cuda, cuda:N, mps), refused in one line where this
    machine has no such device; with `name` None, the best device present. Returns it with
    the line that says which was chosen and why: None when `name` chose it, or when the CPU
    is all this PyTorch sees (a CPU machine's output stays as it was). $FEWSHOT_DEVICE, where
    set, stands for a `name` not given (e.g. cpu on a GPU machine whose GPU is busy)."""
    if name is None and os.environ.get(VARIABLE):
        try:
            return _checked(os.environ[VARIABLE]), None
        except FewshotError as error:
            raise FewshotError(f"{VARIABLE}={os.environ[VARIABLE]!r}: {error}") from None
    if name is not None:
        return _checked(name), None
    if torch.cuda.is_available():
        card = torch.cuda.get_device_name(0)
        return torch.device("cuda"), (f"device: cuda ({card}), the best present; --device cpu runs on the CPU, "
                                      f"--device cuda:N on another card")
    if torch.backends.mps.is_available():
        failure = mps_runs_meta_steps()
        if failure is None:
            return torch.device("mps"), "device: mps (Apple GPU), the best present; --device cpu runs on the CPU"
        return torch.device("cpu"), (f"device: cpu; MPS is present, but this PyTorch cannot run a meta-step's "
                                     f"operations there ({failure}); a newer PyTorch may")
    return torch.device("cpu"), None  # nothing else here: nothing to say


def _checked(name):
    if not isinstance(name, str) or not re.fullmatch(r"cpu(:0)?|cuda(:\d+)?|mps", name):
        raise FewshotError(f"--device {name!r} is not a device; use {DEVICES}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FewshotError(f"--device {name} asked for, but this PyTorch sees no CUDA device; use --device cpu "
                               f"(or leave --device out: the best device present)")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise FewshotError(f"--device {name}: this machine has {count} CUDA device(s); use cuda:0 to "
                               f"cuda:{count - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise FewshotError("--device mps asked for, but this PyTorch sees no MPS device; use --device cpu")
    return torch.device(name)


def mps_runs_meta_steps() -> str | None:
    """None where MPS runs what a meta-step needs (a convolution, batch norm, a derivative of a
    derivative); else the reason, in a few words."""
    try:
        x = torch.randn(2, 1, 6, 6, device="mps")
        weight = torch.randn(3, 1, 3, 3, device="mps", requires_grad=True)
        out = torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, weight), None, None, training=True)
        grad, = torch.autograd.grad(out.square().sum(), weight, create_graph=True)
        grad.square().sum().backward()
        weight.grad.sum().item()
    except (RuntimeError, NotImplementedError, TypeError) as error:
        return reason(error)
    return None


def set_threads(threads: int | None) -> None:
    """Use `threads` torch threads in this process (None: leave torch's choice)."""
    if threads is None:
        return
    torch.set_num_threads(whole_number(threads, 1, "--threads"))


__all__ = ["DEVICES", "VARIABLE", "choose_device", "mps_runs_meta_steps", "set_threads"]
