"""The meta-training loop, shared by every algorithm.

A run folder holds config.yaml, metrics.jsonl / metrics.csv, last.pt and best.pt.
Every task is a pure function of (seed, step, position) and the checkpoint carries weights,
optimizer, schedule, RNG and step, so a resumed run ends with the same weights
as an uninterrupted one.
"""
import csv
import fcntl
import io
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from . import algorithms, checkpoint, data, distributed
from .config import complete, dump, eval_query, eval_ways, validate
from .errors import FewshotError
from .evaluate import evaluate
from .io import write_text
from .tasks import better

CSV_COLUMNS = ["step", "loss", "metric", "val_metric", "val_ci95", "lr", "sec_per_step",
               "tasks_per_s", "images_per_s", "elapsed_s", "nonfinite_steps"]


class RunLock:
    """An exclusive lock on a run folder, released when the process ends."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise FewshotError(f"run folder {folder} is in use by another fewshot process (pid {owner}); "
                               f"wait for it to finish or choose another --out") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self):
        self.handle.close()


def device_of(name):
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FewshotError(f"--device {name} asked for, but this PyTorch sees no CUDA device; use --device cpu")
    return torch.device(name)


def prepare_run(out, resume):
    """Create or reopen the run folder; never touch another run's files."""
    out = Path(out)
    if resume:
        if not (out / "config.yaml").is_file():
            raise FewshotError(f"{out} holds no run to resume (no config.yaml); start one with "
                               f"`fewshot train PRESET --out {out}`")
        return out
    if (out / "config.yaml").exists() or (out / "last.pt").exists():
        raise FewshotError(f"{out} already holds a run; continue it with `fewshot train --resume {out}` "
                           f"or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


class MetricsLog:
    """metrics.jsonl (every field) and metrics.csv (fixed columns), appended row by row."""

    def __init__(self, folder, keep_until_step):
        self.jsonl, self.csv = Path(folder) / "metrics.jsonl", Path(folder) / "metrics.csv"
        rows = read_metrics(folder)
        kept = [r for r in rows if r["step"] <= keep_until_step]
        if len(kept) != len(rows) or not self.csv.exists():  # a resumed run rewinds its log to the checkpoint
            write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
            write_text(self.csv, buffer.getvalue())

    def write(self, row):
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore").writerow(row)


def read_metrics(folder):
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_optimizer(algorithm, config):
    if config["meta_optimizer"] == "sgd":
        optimizer = torch.optim.SGD(algorithm.parameters(), lr=config["meta_lr"])
    else:
        optimizer = torch.optim.Adam(algorithm.parameters(), lr=config["meta_lr"])
    steps, floor = config["steps"], config["min_meta_lr"]
    if config["lr_schedule"] == "cosine":  # MAML++
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=floor)
    elif config["lr_schedule"] == "linear":  # Reptile: the outer step size falls linearly to its final value
        end = floor / config["meta_lr"] if config["meta_lr"] else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, LinearDecay(steps, end))
    else:
        every = config["lr_decay_every"]
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=every if every > 0 else 1,
                                                   gamma=config["lr_decay_gamma"] if every > 0 else 1.0)
    return optimizer, schedule


class LinearDecay:
    """Multiplier falling linearly from 1 at step 0 to `end` at step `steps` (picklable)."""

    def __init__(self, steps, end):
        self.steps, self.end = steps, end

    def __call__(self, step):
        return 1.0 + (self.end - 1.0) * min(step, self.steps) / self.steps


class StopRequested(Exception):
    pass


def train(config=None, out=None, resume=False, device="cpu", progress=True, stop_after=None, threads=None,
          procs=1, time_limit=None):
    """Meta-train into run folder `out`; with `resume`, continue the run there.
    `procs` > 1 splits each meta-batch across that many local processes.
    `threads` overrides the config's torch thread count (per process).
    `time_limit` (seconds) stops the run cleanly, resumable, once that much time has passed.
    `stop_after` ends the run after that step as an interruption would (for tests)."""
    if not isinstance(procs, int) or procs < 1:
        raise FewshotError(f"--procs must be a whole number >= 1, got {procs}")
    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run folder
    if resume:
        out = prepare_run(out, resume=True) if leader else Path(out)
        config = complete(yaml.safe_load((out / "config.yaml").read_text()))
    validate(config)
    device_of(device)
    # loaded (and a checkpoint that does not fit refused) before the run folder exists
    initial = initial_weights(config) if config["init"] and not resume else None
    if not resume and leader:
        out = prepare_run(out, resume=False)
    out = Path(out)
    lock = RunLock(out) if leader else None
    threads = threads or config["threads"]
    try:
        if procs > 1:
            data.load(config, progress)  # import once here, and report bad data before any process starts
            threads = threads or max(1, (os.cpu_count() or 1) // procs)
            distributed.spawn(_train_process, procs, config, out, resume, device, progress, stop_after, threads,
                              time_limit, initial)
            state = checkpoint.load(out / "last.pt")
            return {"out": str(out), "step": state["step"], "best": state["best"],
                    "stopped": state["step"] < config["steps"], "algorithm": None}
        return _train_process(config, out, resume, device, progress, stop_after, threads, time_limit, initial)
    finally:
        if lock:
            lock.release()


def _train_process(config, out, resume, device, progress, stop_after, threads, time_limit=None, initial=None):
    if threads:
        torch.set_num_threads(threads)
    device = device_of(device)
    distributed.init_from_env(device)
    rank, size = distributed.world()
    if device.type == "cuda" and size > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return _train(config, out, resume, device, progress and rank == 0, stop_after, rank, size, time_limit, initial)


def _train(config, out, resume, device, progress, stop_after, rank=0, size=1, time_limit=None, initial=None):
    leader = rank == 0
    dataset, refs = data.load(config, progress)
    preprocessing = data.preprocessing(dataset, config)
    train_sampler = data.sampler(config, dataset, refs, "train", config["seed"])
    val_sampler = data.sampler(config, dataset, refs, "val", config["eval_seed"], query=eval_query(config),
                               ways=eval_ways(config))
    torch.manual_seed(config["seed"])
    algorithm = algorithms.build(config).to(device)
    optimizer, schedule = make_optimizer(algorithm, config)
    step, best = 0, None
    if resume and (out / "last.pt").exists():
        state = checkpoint.load(out / "last.pt")
        algorithm.load_state_dict(state["algorithm"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        step, best = state["step"], state["best"]
    else:
        if initial is not None:
            algorithm.load_state_dict(initial)
        if leader:
            write_text(out / "config.yaml", dump(config))
    log = MetricsLog(out, step) if leader else None
    metric = algorithm.family.metric_name

    def save(name):
        if leader:
            checkpoint.save(out / name, config=config, algorithm=algorithm.state_dict(),
                            optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                            rng=torch.get_rng_state(), step=step, best=best, preprocessing=preprocessing)

    def interrupt(signum, frame):
        raise StopRequested()

    previous = signal.signal(signal.SIGTERM, interrupt) if _main_thread() else None
    total, meta_batch = config["steps"], config["meta_batch"]
    part = distributed.share(meta_batch, rank, size) if size > 1 else None
    batches = data.Prefetcher(train_sampler, step, total, meta_batch, part)
    bar = tqdm(total=total, initial=step, desc=f"train {config.get('preset', '')}", unit="step",
               disable=not progress, dynamic_ncols=True)
    started, window_start, window = time.perf_counter(), time.perf_counter(), []
    stopped = False
    try:
        while step < total:
            tasks = [t.to(device) for t in next(batches)]
            algorithm.train()
            optimizer.zero_grad(set_to_none=True)
            result = algorithm.meta_gradient(tasks, step)
            if size > 1:
                result = distributed.reduce_meta_gradient(algorithm.parameters(), result, len(tasks), meta_batch)
            result = algorithm.finish_meta_gradient(result)
            clip_gradients(algorithm.parameters(), config["grad_clip_value"], config["grad_clip_norm"])
            optimizer.step()
            schedule.step()
            step += 1
            window.append(result)
            bar.update(1)
            bar.set_postfix(loss=f"{result['loss']:.3f}", **{metric[:3]: f"{result[metric]:.3f}"})
            validate_now = step % config["val_every"] == 0 or step == total
            if leader and (step % config["log_every"] == 0 or validate_now):
                elapsed = time.perf_counter() - window_start
                images = sum(t.images for t in tasks) * size * len(window)
                row = {"step": step, "loss": _mean(window, "loss"), "metric": _mean(window, metric),
                       "nonfinite_steps": sum(not math.isfinite(r["loss"]) for r in window),
                       "lr": optimizer.param_groups[0]["lr"], "sec_per_step": elapsed / len(window),
                       "tasks_per_s": meta_batch * len(window) / elapsed, "images_per_s": images / elapsed,
                       "elapsed_s": time.perf_counter() - started}
                if validate_now:
                    val = evaluate(algorithm, val_sampler, config["val_tasks"], device=device)
                    row.update(val_metric=val["mean"], val_ci95=val["ci95"])
                    if better(algorithm.family, val["mean"], best):
                        best = val["mean"]
                        save("best.pt")
                log.write(row)
                bar.write(_format_row(row, metric))
                window, window_start = [], time.perf_counter()
            reached = leader and validate_now and _reached(algorithm.family, best, config["stop_at_val"])
            if distributed.agree(reached):
                save("last.pt")
                if leader:
                    bar.write(f"validation {metric} reached {config['stop_at_val']} at step {step}, "
                              f"{time.perf_counter() - started:.0f} s after start")
                break
            if step % config["save_every"] == 0 or step == total:
                save("last.pt")
            if stop_after is not None and step >= stop_after:
                raise StopRequested()
            if time_limit is not None and distributed.agree(time.perf_counter() - started > time_limit):
                raise StopRequested()
    except (KeyboardInterrupt, StopRequested):
        save("last.pt")
        stopped = True
        if leader:
            bar.write(f"stopped at step {step}; continue with `fewshot train --resume {out}`")
    finally:
        batches.close()
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return {"out": str(out), "step": step, "best": best, "stopped": stopped, "algorithm": algorithm}


def initial_weights(config):
    """The weights of checkpoint `config["init"]`, checked to fit `config`'s model and algorithm."""
    state = checkpoint.load(config["init"])
    weights = state.get("algorithm")
    if not isinstance(weights, dict):
        raise FewshotError(f"{config['init']} holds no trained weights; give a best.pt or last.pt of `fewshot train`")
    expected = algorithms.build(config).state_dict()
    problems = [f"{name} missing there" for name in expected if name not in weights]
    problems += [f"{name} not used here" for name in weights if name not in expected]
    problems += [f"{name} is {tuple(weights[name].shape)} there, {tuple(value.shape)} here"
                 for name, value in expected.items() if name in weights and weights[name].shape != value.shape]
    if problems:
        was = state["config"]
        raise FewshotError(f"--init {config['init']} ({was['algorithm']}, {was['model']}, {was['ways']}-way) does "
                           f"not fit this run ({config['algorithm']}, {config['model']}, {config['ways']}-way): "
                           f"{len(problems)} tensors differ ({'; '.join(problems[:3])}); start from a checkpoint "
                           f"of the same algorithm and network")
    return weights


def _main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


def _reached(family, best, target):
    return target is not None and best is not None and (best >= target if family.higher_is_better else best <= target)


def clip_gradients(parameters, value=None, norm=None):
    """Clip each gradient entry to [-value, value], then each gradient tensor's L2 norm
    to `norm`, as LEO's reference does (runner.py: tf.clip_by_value, then tf.clip_by_norm
    on every gradient separately). None leaves that step out."""
    grads = [p.grad for p in parameters if p.grad is not None]
    for grad in grads:
        if value is not None:
            grad.clamp_(-value, value)
        if norm is not None:
            grad.mul_(torch.clamp(norm / (grad.norm() + 1e-12), max=1.0))


def _mean(rows, key):
    """The mean over the steps with a finite value (LEO skips non-finite meta-batches)."""
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return sum(values) / len(values) if values else float("nan")


def _format_row(row, metric):
    text = (f"step {row['step']:>6}  loss {row['loss']:.4f}  {metric} {row['metric']:.4f}  "
            f"{row['sec_per_step']:.3f} s/step  {row['tasks_per_s']:.1f} tasks/s  "
            f"{row['images_per_s']:.0f} img/s")
    if row.get("nonfinite_steps"):
        text += f"  ({row['nonfinite_steps']} non-finite steps: regularization only)"
    if "val_metric" in row:
        text += f"  val {metric} {row['val_metric']:.4f} +- {row['val_ci95']:.4f}"
    return text
