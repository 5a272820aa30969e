"""Task-parallel meta-training with torch.distributed.

Each rank adapts its share of the meta-batch (tasks rank, rank + world, ...),
the meta-gradients are all-reduced into the mean over the whole batch, and every
rank takes the same optimizer step. One machine: `fewshot train --procs N`
(gloo on CPU). Several machines: launch `fewshot train` with torchrun, which
sets RANK / WORLD_SIZE / MASTER_ADDR; NCCL is used on CUDA devices.
"""
import os
import socket

import torch
import torch.distributed as dist


def world():
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(meta_batch, rank, size):
    return list(range(rank, meta_batch, size))


def reduce_meta_gradient(parameters, metrics, share_size, meta_batch):
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


def agree(flag):
    """True on every rank if it is True on any (so all ranks stop at the same step)."""
    if world()[1] == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value)
    return value.item() > 0


def init_from_env(device):
    """Join the process group torchrun describes, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(function, procs, *args):
    """Run `function(*args)` in `procs` local processes joined by gloo (nccl on GPUs)."""
    torch.multiprocessing.spawn(_entry, args=(procs, free_port(), function, args), nprocs=procs, join=True)


def _entry(rank, procs, port, function, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(procs),
                      LOCAL_RANK=str(rank))
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= procs else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=procs)
    try:
        function(*args)
        dist.barrier()  # every rank done (rank 0 may still be saving) before the group goes away
    finally:
        dist.destroy_process_group()
