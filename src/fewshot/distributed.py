"""Task-parallel meta-training with torch.distributed.

Each rank adapts its share of the meta-batch (tasks rank, rank + world, ...),
the meta-gradients are all-reduced into the mean over the whole batch, and every
rank takes the same optimizer step. One machine: `fewshot train --procs N`
(gloo on CPU). Several machines: launch `fewshot train` with torchrun, which
sets RANK / WORLD_SIZE / MASTER_ADDR; NCCL is used on CUDA devices.

Stopping and failing together. A SIGINT or SIGTERM to the process that spawned the
workers (what `kill PID`, a scheduler or `timeout` sends) is passed to them through
shared memory; a signal a worker receives itself (a process-group kill, or its parent's
death) counts as well. At the end of every step the ranks agree on the request
(`stop_signal`, one all-reduce on the CPU), so they stop at the same step, rank 0
saves, and the parent returns rank 0's result, signal included (the CLI exits 143).
A worker that fails reports its exception to the parent in a file: a FewshotError or
an OSError (tasks that do not fit, a non-finite loss, a full disk) is raised there as
it is, so the user sees the one line a single process prints.
"""
import ctypes
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist

from .errors import FewshotError
from .loop import take_over_stop_signals

# seconds the other workers get to finish (and fail on their own) after one has failed
GRACE_S = 30
_control = None    # the gloo group of the small CPU-side all-reduces (the default group unless it is NCCL)
_parent = None     # the shared value through which the spawning process passes on a signal
_received = []     # signals this worker received before the training loop took them over


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(meta_batch: int, rank: int, size: int) -> list[int]:
    return list(range(rank, meta_batch, size))


def reduce_meta_gradient(parameters: Iterable[torch.Tensor], metrics: Mapping[str, float | torch.Tensor],
                         share_size: int, meta_batch: int) -> dict[str, torch.Tensor]:
    """Turn this rank's mean over its share into the mean over the whole meta-batch,
    for the gradients in place and for the returned metrics. One all-reduce."""
    parameters = list(parameters)
    weight = share_size / meta_batch
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    names = sorted(metrics)
    # metrics may be floats or 0-dim tensors (kept on the device: no host synchronisation here)
    values = torch.stack([torch.as_tensor(metrics[n], dtype=grads[0].dtype, device=grads[0].device).reshape(())
                          for n in names])
    flat = torch.cat([g.reshape(-1) for g in grads] + [values])
    flat *= weight
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(parameters, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return {n: flat[offset + i].clone() for i, n in enumerate(names)}


def agree(flag: bool) -> bool:
    """True on every rank if it is True on any (so all ranks stop at the same step)."""
    if world()[1] == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, group=_control)  # on the CPU: no wait for the device
    return value.item() > 0


def stop_signal(received: int) -> int:
    """The signal that stops every rank at this step, 0 for none: the largest of the one
    this rank `received`, the one its parent passed on, and those it got before the loop
    started, over all ranks."""
    number = max(received, _parent.value if _parent is not None else 0, *_received, 0)
    if world()[1] == 1:
        return number
    value = torch.tensor([number], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control)
    return int(value.item())


def _join(backend, **options):
    global _control
    dist.init_process_group(backend, **options)
    _control = dist.new_group(backend="gloo") if backend == "nccl" else None


def backend_for(device: str | torch.device) -> str:
    """The process group's backend for a run on `device`: NCCL between GPUs, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str | torch.device) -> None:
    """Join the process group torchrun describes, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        _join(backend_for(device))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(function: Callable[..., Any], procs: int, *args: Any, backend: str = "gloo") -> Any:
    """Run `function(*args)` in `procs` local processes joined by `backend` (backend_for) and
    return what rank 0's call returned (it must pickle). A SIGINT or SIGTERM here is
    passed on (see the module docstring); a worker's FewshotError or OSError is raised
    here; any other failure is raised as a RuntimeError holding the worker's traceback."""
    context = multiprocessing.get_context("spawn")
    request = context.Value("i", 0, lock=False)
    folder = tempfile.mkdtemp(prefix="fewshot-procs-")
    outcomes = [os.path.join(folder, f"rank{rank}.pickle") for rank in range(procs)]
    port = free_port()
    processes = [context.Process(target=_entry,
                                 args=(rank, procs, port, function, args, request, outcomes[rank], backend))
                 for rank in range(procs)]

    def pass_on(number, frame):
        request.value = request.value or number

    previous = {}
    try:
        if threading.current_thread() is threading.main_thread():
            previous = take_over_stop_signals(pass_on)
        for process in processes:
            process.start()
        _wait(processes)
        results = [_outcome(path) for path in outcomes]
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        for number, handler in previous.items():
            signal.signal(number, handler)
        shutil.rmtree(folder, ignore_errors=True)
    errors = [r for kind, r in results if kind == "error"]
    if errors:
        raise errors[0]  # the ranks' own refusals first (the lowest rank's), before what followed from them
    bugs = [r for kind, r in results if kind == "bug"]
    if bugs:
        raise RuntimeError(f"a training process failed:\n{bugs[0]}")
    if results[0][0] != "done":
        if request.value:  # stopped by a signal before the workers could save: end as that signal ends us
            signal.raise_signal(request.value)
        codes = ", ".join(str(p.exitcode) for p in processes)
        raise FewshotError(f"the {procs} training processes ended without a result (exit codes {codes}); "
                           f"run again, or with --procs 1")
    return results[0][1]


def _wait(processes):
    """Until every worker has exited; once one has failed, the others get GRACE_S seconds."""
    running = {p.sentinel: p for p in processes}
    deadline = None
    while running:
        ready = wait(list(running), timeout=None if deadline is None else GRACE_S)
        if not ready:  # the grace ran out: the others wait for the failed one in a collective
            break
        for sentinel in ready:
            if running.pop(sentinel).exitcode != 0:
                deadline = GRACE_S


def _outcome(path):
    """("done", value) | ("error", exception) | ("bug", traceback) | ("none", None) of one worker."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return "none", None


def _record(number, frame):
    _received.append(int(number))


def _entry(rank, procs, port, function, args, request, outcome, backend):
    global _parent
    _parent = request
    # until the training loop takes them over, signals are requests to stop, as they are there
    take_over_stop_signals(_record)
    _die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(procs),
                      LOCAL_RANK=str(rank))
    try:
        _join(backend, rank=rank, world_size=procs)
        try:
            result = function(*args)
            dist.barrier(group=_control)  # every rank done (rank 0 may still be saving) before the group goes away
        finally:
            dist.destroy_process_group()
        report = ("done", result)
    except (FewshotError, OSError) as error:
        report = ("error", error)
    except BaseException:  # noqa: B902 - a bug: the parent shows its traceback
        report = ("bug", traceback.format_exc())
    try:
        with open(outcome, "wb") as f:
            pickle.dump(report, f)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        with open(outcome, "wb") as f:
            pickle.dump(("bug", traceback.format_exc()), f)
    sys.exit(0 if report[0] == "done" else 2)


def _die_with_parent():
    """Ask Linux to send this worker SIGTERM when its parent dies (it then saves and stops)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux
