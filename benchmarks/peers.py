"""One MAML meta-training step: fewshot against the libraries people would otherwise use.

    python benchmarks/peers.py --data ../shared/data/omniglot-28 \
        --workloads omniglot-5w1s-pytorch omniglot-20w1s --orders second first \
        --steps 7 --warmup 2 --json runs/bench/peers.json

Like with like. A workload is one of our presets (plus `--set` overrides) at one
order (second = exact MAML, first = FOMAML). Every implementation gets
  - the same conv4 network: ours is `fewshot.models.Conv4`; the peers get `Mirror`,
    an nn.Module that computes exactly what Conv4's forward does
    (conv, batch norm on batch statistics, ReLU, max-pool or strided, flatten or
    spatial mean, linear), loaded with the same initial weights;
  - the same tasks: sampled once per step by our sampler, the identical tensors
    are fed to everyone;
  - the same inner steps, inner learning rate, meta-batch, meta-objective (mean of
    the per-task query losses) and meta-optimizer (Adam at the preset's meta_lr,
    one step per meta-step, zero_grad included).

Implementations:
  fewshot              `algorithm.meta_gradient(tasks)`, then Adam (as the trainer does)
  fewshot-compiled     the same with `compile: true`: `fewshot.compiled.compile_step`
                       (torch.compile, inductor); not in the default --impls, since
                       its first step compiles (minutes on a cold inductor cache, in
                       the float64 check and again in float32, both before timing);
                       its FLOPs are ours and are not counted again
  pytorch-loop         plain PyTorch in the style of the common MAML-PyTorch code:
                       tasks in a Python loop, `torch.autograd.grad(create_graph=True)`
                       for second order (without it for first order), list of fast
                       weights, `torch.func.functional_call`, one backward per task
  learn2learn          `learn2learn.algorithms.MAML(net, lr, first_order)`, clone/adapt
  higher               `higher.innerloop_ctx(net, SGD)`; first order with
                       `track_higher_grads=False` and the query gradient of the fast
                       weights added to the meta-parameters' .grad
  torchopt-metasgd     `torchopt.MetaSGD` with extract/recover_state_dict, as in TorchOpt's
                       MAML Omniglot example (second order only: MetaSGD has no
                       first-order mode)
  torchopt-functional  `torchopt.sgd` + `torchopt.apply_updates` (functional API) over
                       `functional_call`; first order without create_graph
  torch-func-vmap      what a strong user writes by hand with torch.func alone:
                       `vmap` over the tasks of `grad` of a query loss whose inner
                       loop calls `grad` itself (`functional_call` of the Mirror);
                       the whole meta-batch in one pass, no autograd graph kept
                       between calls; first order detaches the inner gradients

Correctness first: one meta-gradient per implementation in float64 (model and tasks
in double), max |difference| against ours. Float32 comparisons cannot decide
equality on this network: near-ties in max-pooling after ReLU flip between
convolution kernels and the inner steps amplify one flip (see the notes on peers).

Timing: float32, in one process, interleaved round-robin (ours, peer, peer, ...,
ours, ...) so that machine noise hits all alike; `--warmup` rounds, then `--steps`
timed rounds; median seconds per meta-step and its ratio to ours.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one extra float32 meta-step
of each implementation (convolutions and matrix products, forward, backward and
double backward); GFLOP/s = FLOPs / median time. Peak: the median rate of a
4096x4096 float32 matmul on the same threads, measured before and after the
timing.

Memory: each implementation runs `--mem-steps` meta-steps in a fresh subprocess
(same workload, same threads); "peak MB" is that process's peak RSS
(VmHWM in /proc/self/status; torch, the data and the peer library included), "step
MB" is the peak during the meta-steps (VmHWM reset through /proc/self/clear_refs
after setup) minus the RSS just before the first meta-step. (getrusage's ru_maxrss
would not do: Linux carries the parent's peak into a child's across fork and exec.)

Installing the peers (CPU torch 2.13.0, Python 3.11), none of them pulls another torch:
    pip install -e ".[bench]"              # higher==0.2.1, torchopt==0.7.3
  learn2learn 0.2.0 is an sdist whose generated C files do not compile on Python
  3.11 (longintrepr.h); regenerate them with a current Cython, outside the repo:
    cd /tmp && pip download --no-deps --no-binary :all: learn2learn==0.2.0
    tar xzf learn2learn-0.2.0.tar.gz && cd learn2learn-0.2.0
    python3 -m venv /tmp/cy && /tmp/cy/bin/pip install cython
    for f in meta_dataset task_dataset transforms; do
        /tmp/cy/bin/cython -3 learn2learn/data/$f.pyx -o learn2learn/data/$f.c; done
    /path/to/.venv/bin/python -m pip install --no-deps --no-build-isolation .
  `import learn2learn` then still fails (it imports torchvision, requests, gym, ...;
  no torchvision works beside torch 2.13.0+cpu), so this script loads
  `learn2learn.algorithms.maml` (and the `learn2learn.utils` it needs) on its own,
  under stub parent packages, when the full import fails; its MAML code is
  unchanged. The report records the import error.

A peer that cannot be imported or run gets a row with its error; the rest still run.

On a GPU (`--device cuda`): models and tasks live on the device (the sampler's
tasks are copied there before timing, outside the timed step), each timed step
ends with `torch.cuda.synchronize()`, the matmul peak is measured on the device,
and the memory subprocess reports `torch.cuda.max_memory_allocated` over its
meta-steps ("peak MB" column: device memory; "step MB": the part above what was
allocated before the first meta-step) instead of RSS.

On a shared machine, `--pause-pid PID` stops process PID (SIGSTOP) during each
workload's measurements and the peak-matmul measurement, and resumes it (SIGCONT)
after each, on errors and on SIGINT/SIGTERM.
"""
import argparse
import atexit
import datetime
import importlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset, parse_overrides
from fewshot.data import Task
from fewshot.models.base import BN_MOMENTUM
from fewshot.optim import make_optimizer

IMPLEMENTATIONS = ["fewshot", "fewshot-compiled", "pytorch-loop", "learn2learn", "higher", "torchopt-metasgd",
                   "torchopt-functional", "torch-func-vmap"]
ORDERS = ("second", "first")
DEVICE = torch.device("cpu")  # --device


def synchronize():
    """Wait for the device, so a timed step ends when its work does."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# --------------------------------------------------------------------------- workload

class Workload:
    """One preset at one order: its config, its task sampler and the initial weights."""

    def __init__(self, preset, data_spec, order, overrides):
        config = apply_overrides(load_preset(preset),
                                 {"data": data_spec, **overrides, "first_order": order == "first"})
        if config.model != "conv4" or config.algorithm != "maml":
            raise SystemExit(f"{preset}: this benchmark compares MAML on conv4, not "
                             f"{config.algorithm} on {config.model}")
        self.preset, self.order, self.config = preset, order, config
        dataset, refs = data.load(config, progress=False)
        self.sampler = data.sampler(config, dataset, refs, "train", config.seed)
        torch.manual_seed(config.seed)
        model = algorithms.build(config).model
        self.initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    @property
    def name(self):
        return self.preset

    def tasks(self, index, dtype=torch.float32):
        batch = self.sampler.batch(index, self.config.meta_batch)
        return [Task(t.support_x.to(DEVICE, dtype), t.support_y.to(DEVICE), t.query_x.to(DEVICE, dtype),
                     t.query_y.to(DEVICE)) for t in batch]


# --------------------------------------------------------------------------- the network as an nn.Module

class MirrorBlock(nn.Module):
    def __init__(self, in_channels, filters, stride, track_running_stats):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, 3, stride=stride, padding=1)
        self.norm = nn.BatchNorm2d(filters, momentum=BN_MOMENTUM, track_running_stats=track_running_stats)


class Mirror(nn.Module):
    """`fewshot.models.Conv4`'s forward as a plain nn.Module, with the same
    parameter names. Transductive batch norm (batch statistics always, no running
    statistics) is BatchNorm2d(track_running_stats=False); inductive is the default
    BatchNorm2d in train mode."""

    def __init__(self, config):
        super().__init__()
        filters, channels = config.filters, config.channels
        self.maxpool = config.downsample == "maxpool"
        stride = 1 if self.maxpool else 2
        track = config.batch_norm != "transductive"
        self.blocks = nn.ModuleList(MirrorBlock(channels if i == 0 else filters, filters, stride, track)
                                    for i in range(4))
        side = config.image_size
        for _ in range(4):
            side //= 2
        self.head = nn.Linear(filters * side * side if self.maxpool else filters, config.ways)

    def forward(self, x):
        for block in self.blocks:
            x = F.relu(block.norm(block.conv(x)))
            if self.maxpool:
                x = F.max_pool2d(x, 2)
        return self.head(x.flatten(1) if self.maxpool else x.mean((2, 3)))


def mirror(workload, dtype):
    net = Mirror(workload.config)
    names = dict(net.named_parameters())
    if set(names) != set(workload.initial):
        raise RuntimeError(f"parameter names differ from fewshot's conv4: "
                           f"{sorted(set(names) ^ set(workload.initial))}")
    with torch.no_grad():
        for name, p in names.items():
            p.copy_(workload.initial[name])
    return net.to(DEVICE, dtype).train()


# --------------------------------------------------------------------------- implementations

class Implementation:
    """Holds one model and its Adam; `step(tasks)` is one meta-training step."""
    counts_flops = True

    def __init__(self, workload, dtype):
        self.config = workload.config
        self.second_order = not self.config.first_order
        self.steps, self.lr = self.config.inner_steps, self.config.inner_lr

    def named_parameters(self):
        raise NotImplementedError

    def meta_gradient(self, tasks):
        raise NotImplementedError

    def make_optimizer(self):
        return torch.optim.Adam([p for _, p in self.named_parameters()], lr=self.config.meta_lr)

    def step(self, tasks):
        self.optimizer.zero_grad(set_to_none=True)
        self.meta_gradient(tasks)
        self.optimizer.step()

    def gradient(self):
        return {n: p.grad.detach().clone() for n, p in self.named_parameters()}


class Fewshot(Implementation):
    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        torch.manual_seed(self.config.seed)
        self.algorithm = algorithms.build(self.config)
        with torch.no_grad():
            for name, p in self.algorithm.model.named_parameters():
                p.copy_(workload.initial[name])
        self.algorithm.to(DEVICE, dtype)
        self.optimizer, _ = make_optimizer(self.algorithm, self.config)

    def named_parameters(self):
        return list(self.algorithm.model.named_parameters())

    def meta_gradient(self, tasks):
        return self.algorithm.meta_gradient(tasks)

    def step(self, tasks):
        self.optimizer.zero_grad(set_to_none=True)
        self.algorithm.meta_gradient(tasks)
        self.optimizer.step()


class FewshotCompiled(Fewshot):
    counts_flops = False  # the same arithmetic as fewshot's; a FLOP counter would also trace the compile

    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        from fewshot.compiled import compile_step
        self.compiled_step = compile_step(self.algorithm, {**self.config, "compile": True})
        if self.compiled_step == self.algorithm.meta_gradient:
            raise Skip("compile_step fell back to the eager step")

    def meta_gradient(self, tasks):
        result = self.compiled_step(tasks, 0)
        if self.compiled_step.failed:  # it ran the eager step: not what this row times
            raise RuntimeError(f"compile failed: {describe(self.compiled_step.failed[0])}")
        return result

    def step(self, tasks):
        self.optimizer.zero_grad(set_to_none=True)
        self.meta_gradient(tasks)
        self.optimizer.step()


class PytorchLoop(Implementation):
    """Plain PyTorch: a list of fast weights, autograd.grad, a backward per task."""

    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        self.net = mirror(workload, dtype)
        self.names = [n for n, _ in self.net.named_parameters()]
        self.optimizer = self.make_optimizer()

    def named_parameters(self):
        return list(self.net.named_parameters())

    def forward(self, weights, x):
        return torch.func.functional_call(self.net, dict(zip(self.names, weights)), (x,))

    def meta_gradient(self, tasks):
        meta = list(self.net.parameters())
        for task in tasks:
            fast = meta
            for _ in range(self.steps):
                loss = F.cross_entropy(self.forward(fast, task.support_x), task.support_y)
                grads = torch.autograd.grad(loss, fast, create_graph=self.second_order)
                fast = [w - self.lr * g for w, g in zip(fast, grads)]
            query_loss = F.cross_entropy(self.forward(fast, task.query_x), task.query_y)
            (query_loss / len(tasks)).backward()


LEARN2LEARN_NOTE = []
LEARN2LEARN_MAML = []


def import_learn2learn_maml():
    """`learn2learn.algorithms.MAML`: the package if it imports, else its maml module
    (and learn2learn.utils) loaded on their own under stub parent packages."""
    if LEARN2LEARN_MAML:
        return LEARN2LEARN_MAML[0]
    try:
        import learn2learn
        LEARN2LEARN_MAML.append(learn2learn.algorithms.MAML)
        return LEARN2LEARN_MAML[0]
    except Exception as error:
        for key in [k for k in sys.modules if k == "learn2learn" or k.startswith("learn2learn.")]:
            del sys.modules[key]
        spec = importlib.util.find_spec("learn2learn")
        if spec is None:
            raise
        root_dir = Path(list(spec.submodule_search_locations)[0])
        for name, folder in (("learn2learn", root_dir), ("learn2learn.algorithms", root_dir / "algorithms")):
            stub = types.ModuleType(name)
            stub.__path__ = [str(folder)]
            sys.modules[name] = stub
        module = importlib.import_module("learn2learn.algorithms.maml")
        note = (f"`import learn2learn` fails ({type(error).__name__}: {error}); timed "
                f"learn2learn.algorithms.maml loaded on its own (unchanged MAML code)")
        LEARN2LEARN_NOTE.append(note)
        LEARN2LEARN_MAML.append(module.MAML)
        return module.MAML


class Learn2learn(Implementation):
    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        MAML = import_learn2learn_maml()
        self.maml = MAML(mirror(workload, dtype), lr=self.lr, first_order=not self.second_order)
        self.optimizer = self.make_optimizer()

    def named_parameters(self):
        return list(self.maml.module.named_parameters())

    def meta_gradient(self, tasks):
        for task in tasks:
            learner = self.maml.clone()
            for _ in range(self.steps):
                learner.adapt(F.cross_entropy(learner(task.support_x), task.support_y))
            query_loss = F.cross_entropy(learner(task.query_x), task.query_y)
            (query_loss / len(tasks)).backward()


class Higher(Implementation):
    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        import higher
        self.higher = higher
        self.net = mirror(workload, dtype)
        self.inner_optimizer = torch.optim.SGD(self.net.parameters(), lr=self.lr)
        self.optimizer = self.make_optimizer()

    def named_parameters(self):
        return list(self.net.named_parameters())

    def meta_gradient(self, tasks):
        meta = list(self.net.parameters())
        for task in tasks:
            with self.higher.innerloop_ctx(self.net, self.inner_optimizer, copy_initial_weights=False,
                                           track_higher_grads=self.second_order) as (fnet, diffopt):
                for _ in range(self.steps):
                    diffopt.step(F.cross_entropy(fnet(task.support_x), task.support_y))
                query_loss = F.cross_entropy(fnet(task.query_x), task.query_y) / len(tasks)
                if self.second_order:
                    query_loss.backward()
                else:  # the fast weights are detached leaves: carry their gradient over
                    grads = torch.autograd.grad(query_loss, list(fnet.parameters()))
                    for p, g in zip(meta, grads):
                        p.grad = g if p.grad is None else p.grad + g


class TorchoptMetaSGD(Implementation):
    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        if not self.second_order:
            raise Skip("MetaSGD always builds the second-order graph; first order is the functional API row")
        import torchopt
        self.torchopt = torchopt
        self.net = mirror(workload, dtype)
        self.optimizer = self.make_optimizer()

    def named_parameters(self):
        return list(self.net.named_parameters())

    def meta_gradient(self, tasks):
        torchopt = self.torchopt
        inner = torchopt.MetaSGD(self.net, lr=self.lr)
        net_state = torchopt.extract_state_dict(self.net)
        inner_state = torchopt.extract_state_dict(inner)
        for task in tasks:
            for _ in range(self.steps):
                inner.step(F.cross_entropy(self.net(task.support_x), task.support_y))
            query_loss = F.cross_entropy(self.net(task.query_x), task.query_y)
            (query_loss / len(tasks)).backward()
            torchopt.recover_state_dict(self.net, net_state)
            torchopt.recover_state_dict(inner, inner_state)


class TorchoptFunctional(Implementation):
    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        import torchopt
        self.torchopt = torchopt
        self.net = mirror(workload, dtype)
        self.names = [n for n, _ in self.net.named_parameters()]
        self.inner = torchopt.sgd(lr=self.lr)
        self.optimizer = self.make_optimizer()

    def named_parameters(self):
        return list(self.net.named_parameters())

    def meta_gradient(self, tasks):
        torchopt = self.torchopt
        meta = tuple(self.net.parameters())
        for task in tasks:
            fast = meta
            state = self.inner.init(fast)
            for _ in range(self.steps):
                out = torch.func.functional_call(self.net, dict(zip(self.names, fast)), (task.support_x,))
                grads = torch.autograd.grad(F.cross_entropy(out, task.support_y), fast,
                                            create_graph=self.second_order)
                updates, state = self.inner.update(grads, state, inplace=False)
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            out = torch.func.functional_call(self.net, dict(zip(self.names, fast)), (task.query_x,))
            (F.cross_entropy(out, task.query_y) / len(tasks)).backward()


class TorchFuncVmap(Implementation):
    """torch.func alone: vmap over tasks of grad of the query loss after an inner loop
    of grad steps. The meta-parameters enter as detached tensors; the per-task
    meta-gradients come back stacked and their mean is added to .grad."""

    def __init__(self, workload, dtype):
        super().__init__(workload, dtype)
        self.net = mirror(workload, dtype)
        self.optimizer = self.make_optimizer()
        net, steps, lr, second_order = self.net, self.steps, self.lr, self.second_order

        def support_loss(weights, support_x, support_y):
            return F.cross_entropy(torch.func.functional_call(net, weights, (support_x,)), support_y)

        def query_loss(weights, support_x, support_y, query_x, query_y):
            for _ in range(steps):
                grads = torch.func.grad(support_loss)(weights, support_x, support_y)
                if not second_order:  # FOMAML: the inner gradients are constants
                    grads = {n: g.detach() for n, g in grads.items()}
                weights = {n: w - lr * grads[n] for n, w in weights.items()}
            return F.cross_entropy(torch.func.functional_call(net, weights, (query_x,)), query_y)

        self.per_task_meta_gradients = torch.func.vmap(torch.func.grad(query_loss), in_dims=(None, 0, 0, 0, 0))

    def named_parameters(self):
        return list(self.net.named_parameters())

    def meta_gradient(self, tasks):
        stack = lambda name: torch.stack([getattr(t, name) for t in tasks])
        weights = {n: p.detach() for n, p in self.net.named_parameters()}
        grads = self.per_task_meta_gradients(weights, stack("support_x"), stack("support_y"), stack("query_x"),
                                             stack("query_y"))
        for n, p in self.net.named_parameters():
            mean = grads[n].mean(0)
            p.grad = mean if p.grad is None else p.grad + mean


class Skip(Exception):
    """This implementation has no form of this workload."""


CLASSES = {"fewshot": Fewshot, "fewshot-compiled": FewshotCompiled, "pytorch-loop": PytorchLoop,
           "learn2learn": Learn2learn, "higher": Higher,
           "torchopt-metasgd": TorchoptMetaSGD, "torchopt-functional": TorchoptFunctional,
           "torch-func-vmap": TorchFuncVmap}


def build(name, workload, dtype):
    return CLASSES[name](workload, dtype)


def describe(error):
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


# --------------------------------------------------------------------------- measurements

def float64_gradients(workload, names):
    """{name: (gradient dict | None, error | None)} of one float64 meta-step on batch 0."""
    tasks = workload.tasks(0, torch.float64)
    out = {}
    for name in names:
        try:
            impl = build(name, workload, torch.float64)
            impl.optimizer.zero_grad(set_to_none=True)
            impl.meta_gradient(tasks)
            out[name] = (impl.gradient(), None)
        except Skip as skip:
            out[name] = (None, f"skipped: {skip}")
        except Exception as error:
            out[name] = (None, describe(error))
        impl = None
    return out


def max_abs_difference(grads, reference):
    return max((grads[n] - reference[n]).abs().max().item() for n in reference)


def matmul_peak(size=4096, repeats=5):
    """GFLOP/s of size x size float32 matmuls on torch's current threads (or the GPU)."""
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    torch.mm(a, b)
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize()
        times.append(time.perf_counter() - start)
    return [2 * size ** 3 / t / 1e9 for t in times]


def count_flops(impl, tasks):
    PAUSE.reassert()
    counter = FlopCounterMode(display=False)
    with counter:
        impl.step(tasks)
    return counter.get_total_flops()


def time_interleaved(impls, workload, steps, warmup, errors):
    """Round-robin over `impls` (a dict, ours first); {name: [seconds per timed step]}."""
    times = {name: [] for name in impls}
    live = dict(impls)
    for round_ in range(warmup + steps):
        tasks = workload.tasks(1 + round_)
        for name, impl in list(live.items()):
            PAUSE.reassert()
            try:
                synchronize()
                start = time.perf_counter()
                impl.step(tasks)
                synchronize()
                elapsed = time.perf_counter() - start
            except Exception as error:
                errors[name] = describe(error)
                del live[name]
                continue
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def memory_in_subprocess(args, workload_name, order, name):
    PAUSE.reassert()
    command = [sys.executable, os.path.abspath(__file__), "--data", args.data, "--child-memory", name,
               "--workloads", workload_name, "--orders", order, "--mem-steps", str(args.mem_steps),
               "--threads", str(torch.get_num_threads()), "--device", DEVICE.type]
    for pair in args.set or []:
        command += ["--set", pair]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"memory_error": f"exit {result.returncode}: {tail}"}
    return json.loads(lines[-1])


def proc_status_mb(key):
    """VmRSS / VmHWM of this process in MiB. VmHWM belongs to the current address
    space; getrusage's ru_maxrss does not do here: Linux carries the parent's peak
    over into it across fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(args):
    workload = Workload(args.workloads[0], args.data, args.orders[0], parse_overrides(args.set))
    impl = build(args.child_memory, workload, torch.float32)
    batches = [workload.tasks(1 + i) for i in range(args.mem_steps)]
    if DEVICE.type == "cuda":  # device memory, not the host's
        synchronize()
        before = torch.cuda.memory_allocated(DEVICE) / 2 ** 20
        torch.cuda.reset_peak_memory_stats(DEVICE)
        for tasks in batches:
            impl.step(tasks)
        synchronize()
        peak = torch.cuda.max_memory_allocated(DEVICE) / 2 ** 20
        print(json.dumps({"peak_mb": peak, "step_mb": peak - before, "before_mb": before,
                          "memory": "cuda max_memory_allocated"}))
        return
    setup_peak = proc_status_mb("VmHWM")
    reset = reset_peak_rss()
    before = proc_status_mb("VmRSS")
    for tasks in batches:
        impl.step(tasks)
    peak = proc_status_mb("VmHWM")
    print(json.dumps({"peak_mb": max(peak, setup_peak), "step_mb": peak - before if reset else None,
                      "before_mb": before, "setup_peak_mb": setup_peak, "steps_peak_mb": peak}))


# --------------------------------------------------------------------------- pausing a background process

class Pause:
    """SIGSTOP `pid` inside the block, SIGCONT on leaving it (and at exit, on signals).

    `reassert()`, called before each measured step, stops `pid` again in case someone
    else resumed it meanwhile; after `limit` seconds in one block it resumes `pid` for
    good and stops reasserting, so that no pause lasts longer than that."""

    def __init__(self, pid, limit=540):
        self.pid, self.limit, self.since = pid, limit, None
        if pid:
            atexit.register(self.resume)
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)

                def handler(signum, frame, previous=previous):
                    self.resume()
                    if callable(previous):
                        previous(signum, frame)
                    raise SystemExit(128 + signum)
                signal.signal(sig, handler)

    def resume(self):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def reassert(self):
        if not self.pid or self.since is None:
            return
        if time.monotonic() - self.since > self.limit:
            log(f"pause of {self.pid} reached {self.limit} s: resuming it, measuring on")
            self.since = None
            self.resume()
            return
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass

    def __enter__(self):
        self.since = time.monotonic()
        self.reassert()
        return self

    def __exit__(self, *exc):
        self.since = None
        self.resume()
        return False


PAUSE = Pause(None)


def log(message):
    print(f"{datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- report

def git_state():
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return head + (" (src/ modified)" if dirty else "")
    except OSError:
        return "unknown"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def table(rows, peak):
    lines = ["| workload | order | implementation | max abs grad diff vs ours (float64) | median s/step | "
             "ratio to ours | peak MB (step MB) | GFLOP/s | % of peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| `{r['workload']}` | {r['order']} | {r['implementation']} | "
                         f"{r.get('status')} | | | | | |")
            continue
        diff = "reference" if r["implementation"] == "fewshot" else fmt(r.get("grad_diff"), ".1e")
        memory = (f"{r['peak_mb']:.0f} ({fmt(r.get('step_mb'), '.0f')})" if r.get("peak_mb") is not None
                  else r.get("memory_error", "–"))
        gflops = r.get("gflops")
        lines.append(f"| `{r['workload']}` | {r['order']} | {r['implementation']} | {diff} | "
                     f"{fmt(r.get('median_s'), '.3f')} | {fmt(r.get('ratio'), '.2f')} | {memory} | "
                     f"{fmt(gflops, '.1f')} | {fmt(None if gflops is None else 100 * gflops / peak, '.0f')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--workloads", nargs="+", default=["omniglot-5w1s-pytorch", "omniglot-20w1s"])
    parser.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS,
                        default=[n for n in IMPLEMENTATIONS if n != "fewshot-compiled"],
                        help="implementations to run (fewshot always runs: it is the reference)")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mem-steps", type=int, default=2, help="meta-steps per memory subprocess")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where models and tasks live (cuda: synchronized timing, device peak memory)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset key")
    parser.add_argument("--pause-pid", type=int, help="SIGSTOP this process while measuring, SIGCONT after")
    parser.add_argument("--max-pause", type=float, default=540, help="longest pause of --pause-pid, seconds")
    parser.add_argument("--check-threads", type=int, default=1,
                        help="torch threads for the float64 check (not timed)")
    parser.add_argument("--json")
    parser.add_argument("--child-memory", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False); "
                         "run on a GPU machine or use --device cpu")
    DEVICE = torch.device(args.device)
    if args.child_memory:
        return child_memory(args)

    names = ["fewshot"] + [n for n in args.impls if n != "fewshot"]
    overrides = parse_overrides(args.set)
    global PAUSE
    pause = PAUSE = Pause(args.pause_pid, args.max_pause)
    threads = torch.get_num_threads()
    started = datetime.datetime.now().astimezone()
    with pause:
        peak_rates = matmul_peak()
    rows = []
    for workload_name in args.workloads:
        for order in args.orders:
            workload = Workload(workload_name, args.data, order, overrides)
            log(f"[{workload_name} {order}] float64 meta-gradients ({args.check_threads} thread(s))")
            torch.set_num_threads(args.check_threads)
            checks = float64_gradients(workload, names)
            torch.set_num_threads(threads)
            reference, ref_error = checks["fewshot"]
            if reference is None:
                raise SystemExit(f"fewshot's own float64 meta-gradient failed: {ref_error}")
            scale = max(g.abs().max().item() for g in reference.values())
            results = {}
            for name in names:
                grads, error = checks[name]
                row = {"workload": workload_name, "order": order, "implementation": name,
                       "grad_max_abs": scale, "status": "ok" if error is None else error}
                if grads is not None:
                    row["grad_diff"] = max_abs_difference(grads, reference)
                results[name] = row
            impls = {}
            for name in names:
                if results[name]["status"] != "ok":
                    continue
                try:
                    impls[name] = build(name, workload, torch.float32)
                except Skip as skip:
                    results[name]["status"] = f"skipped: {skip}"
                except Exception as error:
                    results[name]["status"] = describe(error)
            log(f"[{workload_name} {order}] timing {', '.join(impls)} on {threads} thread(s)")
            errors = {}
            with pause:
                for name, impl in impls.items():  # one counted, untimed step each
                    if not impl.counts_flops:
                        continue
                    try:
                        results[name]["flops"] = count_flops(impl, workload.tasks(0))
                    except Exception as error:
                        errors[name] = describe(error)
                times = time_interleaved({n: i for n, i in impls.items() if n not in errors},
                                         workload, args.steps, args.warmup, errors)
                impls = None
                if not args.no_memory:
                    log(f"[{workload_name} {order}] memory, one subprocess each")
                    for name in names:
                        if results[name]["status"] == "ok" and name not in errors:
                            results[name].update(memory_in_subprocess(args, workload_name, order, name))
            for name, error in errors.items():
                results[name]["status"] = error
            ours = statistics.median(times["fewshot"]) if times.get("fewshot") else None
            for name in names:
                row = results[name]
                if row["status"] != "ok" or not times.get(name):
                    continue
                row["times_s"] = times[name]
                row["median_s"] = statistics.median(times[name])
                row["ratio"] = row["median_s"] / ours if ours else None
                # the same round's step of ours, which met the same machine state
                row["ratio_per_round"] = [t / o for t, o in zip(times[name], times.get("fewshot", []))]
                if row.get("flops"):
                    row["gflops"] = row["flops"] / row["median_s"] / 1e9
                    row["fraction_of_peak"] = row["gflops"] / statistics.median(peak_rates)
            for name in names:
                results[name]["load_average_after"] = os.getloadavg()[0]
            rows += [results[n] for n in names]
            print(table([results[n] for n in names], statistics.median(peak_rates)), file=sys.stderr, flush=True)
    with pause:
        peak_rates += matmul_peak()
    peak = statistics.median(peak_rates)
    for row in rows:
        if row.get("gflops"):
            row["fraction_of_peak"] = row["gflops"] / peak
    rows.sort(key=lambda r: (args.workloads.index(r["workload"]), args.orders.index(r["order"]),
                             names.index(r["implementation"])))

    meta = {"date": started.isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name,
                                                                                 *sys.argv]),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
            "cores": os.cpu_count(), "python": platform.python_version(), "fewshot_git": git_state(),
            "steps": args.steps, "warmup": args.warmup, "mem_steps": args.mem_steps,
            "matmul_peak_gflops": peak, "matmul_rates_gflops": peak_rates,
            "paused_pid": args.pause_pid, "check_threads": args.check_threads,
            "load_average_after": os.getloadavg(), "notes": LEARN2LEARN_NOTE}
    on_gpu = f"{meta['device']} (synchronized after each step), host " if DEVICE.type == "cuda" else ""
    print(f"{meta['date']}: torch {meta['torch']}, {on_gpu}{meta['threads']} threads, {meta['cpu']} "
          f"({meta['cores']} cores), fewshot {meta['fewshot_git']}; {args.warmup} warm-up + {args.steps} "
          f"timed meta-steps, interleaved; 4096x4096 float32 matmul peak {peak:.0f} GFLOP/s")
    print()
    print(table(rows, peak))
    for workload_name in args.workloads:
        for order in args.orders:
            sel = [r for r in rows if r["workload"] == workload_name and r["order"] == order and r.get("flops")]
            if sel:
                counts = sorted({r["flops"] for r in sel})
                print(f"\n`{workload_name}` {order}: {counts[0] / 1e9:.1f} GFLOP per meta-step"
                      + ("" if len(counts) == 1 else f" (peers count {', '.join(f'{c / 1e9:.1f}' for c in counts)})")
                      + f"; largest |meta-gradient| entry {sel[0]['grad_max_abs']:.3g}")
    for note in LEARN2LEARN_NOTE:
        print(f"\nlearn2learn: {note}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
