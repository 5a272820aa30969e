"""The meta-training loop, shared by every algorithm.

A run folder holds config.yaml, metrics.jsonl / metrics.csv, last.pt and best.pt.
Every task is a pure function of (seed, step, position) and the checkpoint carries weights,
optimizer, schedule, RNG and step, so a resumed run ends with the same weights
as an uninterrupted one.

The loop never waits for the device: a step's metrics stay tensors until the next log
row reads the whole window at once, and on CUDA the episodes are built on the device.

Stopping. The first SIGINT or SIGTERM asks the run to stop; inside a critical section
(the optimizer step together with the step counter, a log row with its validation,
a checkpoint) the request waits for the section to end, so a checkpoint never holds
one step's weights under another step's number. The run then saves last.pt and
`train` returns with "signal" set (the CLI exits 128 + signal: 130, 143); signals
that arrive while it saves are ignored. A time limit or a reached validation target
are normal ends.
"""
import csv
import fcntl
import io
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from . import algorithms, checkpoint, data, distributed
from .config import complete, dump, eval_query, eval_ways, validate
from .data.episodes import DeviceEpisodes
from .errors import FewshotError
from .evaluate import evaluate
from .files import write_text
from .tasks import better

CSV_COLUMNS = ["step", "loss", "metric", "val_metric", "val_ci95", "lr", "sec_per_step",
               "tasks_per_s", "images_per_s", "elapsed_s", "nonfinite_steps", "peak_rss_mb", "peak_gpu_mb"]
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv")
# device types on which the episodes are built on the device itself (tests add "cpu" to run that path)
EPISODES_ON_DEVICE = ("cuda",)
# the settings that make a checkpoint another run's, not this one's
IDENTITY_KEYS = ("preset", "algorithm", "model", "dataset")


class RunLock:
    """An exclusive lock on a run folder, held until release() or the process ends.
    The lock file is removed on release; a file left by a killed process is reused."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise FewshotError(f"run folder {folder} is in use by another fewshot process (pid {owner}); "
                                   f"wait for it to finish or choose another --out") from None
            # the previous holder may have removed the file while we opened it: then the
            # lock we hold is on a file nobody else will find, so lock the current one
            try:
                current = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()
        self.handle = handle
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self):
        if self.handle.closed:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.handle.close()


def device_of(name):
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise FewshotError(f"unknown --device {name!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FewshotError(f"--device {name} asked for, but this PyTorch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FewshotError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices "
                           f"(cuda:0 ...); choose one of them")
    return device


def prepare_run(out, resume):
    """Create or reopen the run folder; never touch another run's files. Returns
    (folder, the topmost folder this call created or None)."""
    out = Path(out)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
        if not (out / "config.yaml").is_file():
            if found:
                raise FewshotError(f"{out} holds run files ({', '.join(found)}) but no config.yaml, so it "
                                   f"cannot be resumed; start a new run with another --out")
            raise FewshotError(f"{out} holds no run to resume (no config.yaml); start one with "
                               f"`fewshot train PRESET --out {out}`")
        return out, None
    if out.exists() and not out.is_dir():
        raise FewshotError(f"--out {out} is a file, not a folder; choose another --out")
    if "config.yaml" in found or "last.pt" in found:
        raise FewshotError(f"{out} already holds a run; continue it with `fewshot train --resume {out}` "
                           f"or choose another --out")
    if found:
        raise FewshotError(f"{out} holds another run's files ({', '.join(found)}) but no config.yaml or "
                           f"last.pt; they are left alone: choose another --out or move them away")
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FewshotError(f"cannot create run folder {out} ({error.strerror}); choose another --out") from None
    return out, (missing[-1] if missing else None)


def _clean_failed_start(out, created):
    """Remove what a fresh run wrote before it trained a step, so the same command can be retried."""
    for name in RUN_FILES:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
    if created is not None:
        for folder in (out, *out.parents):
            try:
                folder.rmdir()  # only empty folders
            except OSError:
                break
            if folder == created:
                break


def _clean_stale_files(out):
    """Temporary files of writes a killed process never finished (we hold the lock: no one else writes here)."""
    for path in out.glob(".*.tmp"):
        try:
            path.unlink()
        except OSError:
            pass


def read_config(out):
    """A run folder's config.yaml, checked."""
    path = Path(out) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping of keys to values")
        config = complete(config)
        validate(config)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, UnicodeDecodeError, FewshotError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise FewshotError(f"{path} is damaged ({reason}); restore it from a copy, or start a new run "
                           f"in another folder (with --init {Path(out) / 'last.pt'} to keep the weights)") from None
    return config


class MetricsLog:
    """metrics.jsonl (every field) and metrics.csv (fixed columns), appended row by row."""

    def __init__(self, folder, keep_until_step):
        self.jsonl, self.csv = Path(folder) / "metrics.jsonl", Path(folder) / "metrics.csv"
        rows, torn = _read_rows(self.jsonl)
        kept = [r for r in rows if r["step"] <= keep_until_step]
        lines = self.csv.read_text(errors="replace").splitlines() if self.csv.exists() else []
        # a resumed run rewinds its log to the checkpoint, drops torn lines, completes a csv that a kill cut
        # short of the jsonl, and brings an older csv's columns up to date
        if (len(kept) != len(rows) or torn or lines[:1] != [",".join(CSV_COLUMNS)]
                or len(lines) - 1 != len(kept)):
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


def _read_rows(path):
    """(rows, number of unreadable lines) of a metrics.jsonl; a line torn by a crash is skipped with a warning."""
    if not path.exists():
        return [], 0
    rows, torn = [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError
        except ValueError:
            torn += 1
            print(f"fewshot: warning: {path} line {number} is torn or not a metrics row; skipped",
                  file=sys.stderr)
            continue
        rows.append(row)
    return rows, torn


def read_metrics(folder):
    return _read_rows(Path(folder) / "metrics.jsonl")[0]


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


class Signals:
    """SIGINT and SIGTERM as stop requests. A request raises StopRequested at once,
    except inside `with signals:` (a critical section), where it waits for the
    section's end. The first signal is kept (for the exit status); later ones, and any
    once `stopping` is set (the final save is under way), are ignored."""

    def __init__(self):
        self.received, self.depth, self.stopping, self.previous = None, 0, False, {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def restore(self):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number, frame):
        if self.received is not None or self.stopping:
            if self.received is None:
                self.received = number
            return
        self.received = number
        if self.depth == 0:
            raise StopRequested()

    def __enter__(self):
        self.depth += 1
        return self

    def __exit__(self, kind, value, traceback):
        self.depth -= 1
        if kind is None and self.depth == 0 and self.received is not None and not self.stopping:
            raise StopRequested()
        return False


def default_threads():
    """torch threads when neither --threads nor the config's `threads` says: one per
    core this process may run on (idle OpenMP threads sleep, see fewshot/__init__.py)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def train(config=None, out=None, resume=False, device="cpu", progress=True, stop_after=None, threads=None,
          procs=1, time_limit=None):
    """Meta-train into run folder `out`; with `resume`, continue the run there.
    `procs` > 1 splits each meta-batch across that many local processes.
    `threads` overrides the config's torch thread count (per process).
    `time_limit` (seconds) stops the run cleanly, resumable, once that much time has passed.
    `stop_after` ends the run after that step as an interruption would (for tests).
    Returns {"out", "step", "best", "stopped", "reason", "signal", "algorithm"}: "reason"
    says why a run ended early ("signal", "time_limit", "target", "stop_after"), and
    "signal" is the number of the signal that stopped it (the CLI exits 128 + it)."""
    if not isinstance(procs, int) or procs < 1:
        raise FewshotError(f"--procs must be a whole number >= 1, got {procs}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise FewshotError(f"--threads must be a whole number >= 1, got {threads}")
    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run folder
    created = None
    if resume:
        out = prepare_run(out, resume=True)[0] if leader else Path(out)
        config = read_config(out)
    validate(config)
    device_of(device)
    out = Path(out)
    # loaded (and a checkpoint that does not fit refused) before the run folder exists; a resumed
    # run that was killed before its first checkpoint starts from the same --init weights again
    initial = initial_weights(config) if config["init"] and not (resume and (out / "last.pt").exists()) else None
    if not resume and leader:
        out, created = prepare_run(out, resume=False)
    lock, failed = None, False
    try:
        lock = RunLock(out) if leader else None
        if leader:
            _clean_stale_files(out)
        threads = threads or config["threads"] or (max(1, default_threads() // procs) if procs > 1 else None)
        if procs > 1:
            data.load(config, progress and sys.stderr.isatty())  # import once here; bad data refused before any process starts
            distributed.spawn(_train_process, procs, config, out, resume, device, progress, stop_after, threads,
                              time_limit, initial)
            state = checkpoint.load(out / "last.pt")
            return {"out": str(out), "step": state["step"], "best": state["best"], "signal": None,
                    "stopped": state["step"] < config["steps"], "reason": None, "algorithm": None}
        return _train_process(config, out, resume, device, progress, stop_after, threads, time_limit, initial)
    except BaseException:
        failed = lock is not None and not resume
        raise
    finally:
        if lock:
            lock.release()
        if failed and not _trained(out):  # a fresh start that failed before its first step leaves nothing behind
            _clean_failed_start(out, created)


def _trained(out):
    try:
        return checkpoint.load(out / "last.pt")["step"] > 0
    except (FewshotError, KeyError, TypeError):
        return False


def _train_process(config, out, resume, device, progress, stop_after, threads, time_limit=None, initial=None):
    if threads:
        torch.set_num_threads(threads)
    device = device_of(device)
    distributed.init_from_env(device)
    rank, size = distributed.world()
    if device.type == "cuda" and size > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return _train(config, out, resume, device, progress and rank == 0, stop_after, rank, size, time_limit, initial)


def _samplers(config, device, terminal):
    """(dataset, train sampler, validation sampler); on CUDA, the image samplers build
    their tasks on the device from one uint8 copy of the dataset there."""
    dataset, refs = data.load(config, terminal)
    train_sampler = data.sampler(config, dataset, refs, "train", config["seed"])
    val_sampler = data.sampler(config, dataset, refs, "val", config["eval_seed"], query=eval_query(config),
                               ways=eval_ways(config))
    if (device.type in EPISODES_ON_DEVICE and isinstance(train_sampler, data.EpisodeSampler)
            and DeviceEpisodes.fits(train_sampler, device)):
        train_sampler = DeviceEpisodes(train_sampler, device)
        val_sampler = DeviceEpisodes(val_sampler, device, images=train_sampler.images)
    return dataset, train_sampler, val_sampler


def _train(config, out, resume, device, progress, stop_after, rank=0, size=1, time_limit=None, initial=None):
    leader = rank == 0
    # a progress bar only where it is drawn; a log file or pipe gets the log lines alone
    terminal = progress and sys.stdout.isatty() and sys.stderr.isatty()
    dataset, train_sampler, val_sampler = _samplers(config, device, terminal)
    preprocessing = data.preprocessing(dataset, config)
    torch.manual_seed(config["seed"])
    algorithm = algorithms.build(config).to(device)
    optimizer, schedule = make_optimizer(algorithm, config)
    step, best, saved_step = 0, None, None
    fresh = not (resume and (out / "last.pt").exists())
    if not fresh:
        state = checkpoint.load(out / "last.pt")
        _load_state(state, config, out, algorithm, optimizer, schedule)
        step, best, saved_step = state["step"], state["best"], state["step"]
    elif initial is not None:
        algorithm.load_state_dict(initial)
    metric = algorithm.family.metric_name
    # LEO's reference replaces a non-finite meta-batch's gradient by an L2-only one and
    # counts the step (nonfinite_steps); for every other algorithm a non-finite loss ends the run
    allow_nonfinite = config["algorithm"] == "leo"
    log, window, checked = None, [], 0  # window: (step, result) since the last log row; checked: its finite prefix

    def nonfinite(at, what):
        kept = (f"{out / 'last.pt'} still holds step {saved_step}, the last good checkpoint" if saved_step is not None
                else "no checkpoint was written")
        return FewshotError(f"{what} became non-finite at step {at}; stopped without saving, so {kept}; lower "
                            f"meta_lr or inner_lr, or set grad_clip_norm (--set), and train again")

    def check_window(losses=None):
        """Stop on a non-finite loss in the window; `losses`: its values already read, else
        they are read here (one host transfer)."""
        nonlocal checked
        if not allow_nonfinite and checked < len(window):
            if losses is None:
                losses = [None] * checked + _host([r["loss"] for _, r in window[checked:]])
            for (at, _), loss in zip(window[checked:], losses[checked:]):
                if not math.isfinite(loss):
                    raise nonfinite(at, "the meta-loss")
        checked = len(window)

    def save(name):
        nonlocal saved_step
        check_window()
        if leader:
            if not bool(torch.stack([p.detach().isfinite().all() for p in algorithm.parameters()]).all()):
                raise nonfinite(step, "the weights")
            checkpoint.save(out / name, config=config, algorithm=algorithm.state_dict(),
                            optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                            rng=torch.get_rng_state(), step=step, best=best, preprocessing=preprocessing)
            if name == "last.pt":
                saved_step = step

    total, meta_batch = config["steps"], config["meta_batch"]
    part = distributed.share(meta_batch, rank, size) if size > 1 else None
    batches = data.Prefetcher(train_sampler, step, total, meta_batch, part,
                              pin=device.type == "cuda" and not isinstance(train_sampler, DeviceEpisodes))
    bar = tqdm(total=total, initial=step, desc=f"train {config.get('preset', '')}", unit="step",
               disable=not (terminal and leader), dynamic_ncols=True)

    def say(text):
        if leader:
            bar.write(text) if terminal else print(text, flush=True)

    signals = Signals().install()
    started, window_start = time.perf_counter(), time.perf_counter()
    first_step, stopped, reason = step, False, None
    try:
        with signals:
            if leader:
                if fresh and not (out / "config.yaml").exists():
                    write_text(out / "config.yaml", dump(config))
                log = MetricsLog(out, step)
            if fresh:
                save("last.pt")  # step 0: a run killed before its first periodic save resumes from here
        while step < total:
            tasks = [t.to(device) for t in next(batches)]
            algorithm.train()
            optimizer.zero_grad(set_to_none=True)
            try:
                result = algorithm.meta_gradient(tasks, step)
            except torch.OutOfMemoryError:
                if step != first_step:
                    raise
                raise FewshotError(_out_of_memory(config, device, len(tasks))) from None
            if size > 1:
                result = distributed.reduce_meta_gradient(algorithm.parameters(), result, len(tasks), meta_batch)
            result = algorithm.finish_meta_gradient(result)
            clip_gradients(algorithm.parameters(), config["grad_clip_value"], config["grad_clip_norm"])
            with signals:  # the weights and the step number change together
                optimizer.step()
                schedule.step()
                step += 1
                # kept as they are (floats or 0-dim tensors) until the log row; detached, so no graph outlives its step
                window.append((step, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in result.items()}))
                bar.update(1)
                validate_now = step % config["val_every"] == 0 or step == total
                if step % config["log_every"] == 0 or validate_now:
                    values = _host([r[key] for _, r in window for key in ("loss", metric)])  # the one sync
                    elapsed = time.perf_counter() - window_start  # after it: the device's work is done
                    check_window(values[0::2])
                    if leader:
                        row = _row(step, values[0::2], values[1::2], elapsed, time.perf_counter() - started,
                                   optimizer.param_groups[0]["lr"], meta_batch,
                                   sum(t.images for t in tasks) * size, device)
                        if validate_now:
                            val = evaluate(algorithm, val_sampler, config["val_tasks"], device=device)
                            row.update(val_metric=val["mean"], val_ci95=val["ci95"])
                            if better(algorithm.family, val["mean"], best):
                                best = val["mean"]
                                save("best.pt")
                        log.write(row)
                        say(_format_row(row, metric))
                        if terminal:
                            bar.set_postfix(loss=f"{row['loss']:.3f}", **{metric[:3]: f"{row['metric']:.3f}"})
                    window, checked, window_start = [], 0, time.perf_counter()
                reached = leader and validate_now and _reached(algorithm.family, best, config["stop_at_val"])
                if validate_now and distributed.agree(reached):  # every rank knows validate_now: no sync otherwise
                    save("last.pt")
                    stopped, reason = True, "target"
                    say(f"stopped at step {step}: validation {metric} reached {config['stop_at_val']} "
                        f"{time.perf_counter() - started:.0f} s after start (stop_at_val); saved {out / 'last.pt'}")
                    break
                if step % config["save_every"] == 0 or step == total:
                    save("last.pt")
            if stop_after is not None and step >= stop_after:
                reason, signals.stopping = "stop_after", True
                raise StopRequested()
            # several processes agree on the clock at log rows only (an all-reduce is a host sync)
            if (time_limit is not None and (size == 1 or step % config["log_every"] == 0)
                    and distributed.agree(time.perf_counter() - started > time_limit)):
                reason, signals.stopping = "time_limit", True
                raise StopRequested()
        signals.stopping = True  # done: a late signal changes nothing
    except (KeyboardInterrupt, StopRequested):
        signals.stopping = True  # further signals are ignored until last.pt is written
        reason = "signal" if signals.received is not None or reason is None else reason
        save("last.pt")
        stopped = True
        if reason == "time_limit":
            say(f"stopped at step {step}: the time limit of {time_limit / 60:g} minutes is reached; saved "
                f"{out / 'last.pt'}; continue with `fewshot train --resume {out}`")
        elif reason == "signal":
            name = signal.Signals(signals.received).name if signals.received else "KeyboardInterrupt"
            say(f"stopped at step {step} by {name}; saved {out / 'last.pt'}; continue with "
                f"`fewshot train --resume {out}`")
        else:
            say(f"stopped at step {step}; continue with `fewshot train --resume {out}`")
    finally:
        signals.restore()
        batches.close()
        bar.close()
    stopped_by = signals.received if reason == "signal" else None
    if reason == "signal" and stopped_by is None:
        stopped_by = signal.SIGINT  # a KeyboardInterrupt outside the main thread's handler
    return {"out": str(out), "step": step, "best": best, "stopped": stopped and reason != "target",
            "reason": reason, "signal": int(stopped_by) if stopped_by is not None else None, "algorithm": algorithm}


def _load_state(state, config, out, algorithm, optimizer, schedule):
    """Restore a run's last.pt into the freshly built objects, refusing another run's checkpoint."""
    path = out / "last.pt"
    was = state.get("config")
    if not isinstance(was, dict):
        raise FewshotError(f"{path} holds no config, so it is not this run's checkpoint; put the run's own "
                           f"last.pt back, or start a new run in another folder")
    differ = [key for key in IDENTITY_KEYS if was.get(key) != config.get(key)]
    if differ:
        theirs = ", ".join(f"{key} {was.get(key)!r}" for key in differ)
        ours = ", ".join(f"{key} {config.get(key)!r}" for key in differ)
        raise FewshotError(f"{path} is another run's checkpoint ({theirs}; this run's config.yaml: {ours}); put "
                           f"this run's last.pt back, or start a new run in another folder")
    try:
        algorithm.load_state_dict(state["algorithm"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        state["step"], state["best"]
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise FewshotError(f"{path} does not fit this run's config.yaml ({reason}); put this run's last.pt "
                           f"back, or start a new run in another folder") from None


def _out_of_memory(config, device, tasks):
    chunk = max(1, (config["tasks_per_pass"] or tasks) // 2)
    return (f"the meta-batch does not fit in the memory of {device} ({tasks} tasks per pass at the first step); "
            f"set tasks_per_pass={chunk} (--set tasks_per_pass={chunk}: the same gradient, in chunks)")


def _host(values):
    """Floats of a list of floats and 0-dim tensors: one transfer for all the tensors."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [float(v) for v in values]
    read = iter(torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors]).tolist())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _row(step, losses, metrics, elapsed, since_start, lr, meta_batch, images_per_step, device):
    steps = len(losses)
    row = {"step": step, "loss": _finite_mean(losses), "metric": _finite_mean(metrics),
           "nonfinite_steps": sum(not math.isfinite(v) for v in losses), "lr": lr,
           "sec_per_step": elapsed / steps, "tasks_per_s": meta_batch * steps / elapsed,
           "images_per_s": images_per_step * steps / elapsed, "elapsed_s": since_start,
           "peak_rss_mb": round(_peak_rss_mb(), 1)}
    if device.type == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return row


def _peak_rss_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def initial_weights(config):
    """The weights of checkpoint `config["init"]`, checked to fit `config`'s model and algorithm."""
    state = checkpoint.load(config["init"])
    weights = state.get("algorithm")
    if not isinstance(weights, dict):
        raise FewshotError(f"{config['init']} holds no trained weights; give a best.pt or last.pt of `fewshot train`")
    algorithm = algorithms.build(config)
    weights, expected = algorithm.weights_only(weights), algorithm.weights_only(algorithm.state_dict())
    problems = [f"{name} missing there" for name in expected if name not in weights]
    problems += [f"{name} not used here" for name in weights if name not in expected]
    problems += [f"{name} is {tuple(weights[name].shape)} there, {tuple(value.shape)} here"
                 for name, value in expected.items() if name in weights and weights[name].shape != value.shape]
    if problems:
        was = state.get("config") or {}
        raise FewshotError(f"--init {config['init']} ({was.get('algorithm')}, {was.get('model')}, {was.get('ways')}-way)"
                           f" does not fit this run ({config['algorithm']}, {config['model']}, {config['ways']}-way): "
                           f"{len(problems)} tensors differ ({'; '.join(problems[:3])}); start from a checkpoint "
                           f"of the same algorithm and network")
    return weights


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
    return _finite_mean(_host([r[key] for r in rows]))


def _finite_mean(values):
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def _format_row(row, metric):
    text = (f"step {row['step']:>6}  loss {row['loss']:.4f}  {metric} {row['metric']:.4f}  "
            f"{row['sec_per_step']:.3f} s/step  {row['tasks_per_s']:.1f} tasks/s  "
            f"{row['images_per_s']:.0f} img/s")
    if row.get("nonfinite_steps"):
        text += f"  ({row['nonfinite_steps']} non-finite steps: regularization only)"
    if "val_metric" in row:
        text += f"  val {metric} {row['val_metric']:.4f} +- {row['val_ci95']:.4f}"
    if "peak_rss_mb" in row:
        text += f"  peak {row['peak_rss_mb']:.0f} MB RSS"
    if "peak_gpu_mb" in row:
        text += f", {row['peak_gpu_mb']:.0f} MB GPU"
    return text
