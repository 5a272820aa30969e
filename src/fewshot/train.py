"""Meta-training, shared by every algorithm: `train` builds the run (folder, lock, data,
algorithm, optimizer, checkpoint to resume from) and runs meta-steps through the
resumable loop of loop.py.

Every task is a pure function of (seed, step, position) and the checkpoint carries weights,
optimizer, schedule, RNG and step, so a resumed run ends with the same weights
as an uninterrupted one.

The loop never waits for the device: a step's metrics stay tensors until the next log
row reads the whole window at once, and on CUDA the episodes are built on the device.

Extending a run. `train(out=RUN, resume=True, steps=N)` (`fewshot train --resume RUN
--steps N`) continues a finished or stopped run up to N steps in all. `steps` is the
only setting a resume may change (RESUME_KEYS); config.yaml is rewritten with it, and
schedules that span the run follow the new length as optim.py describes.
"""
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from . import algorithms, checkpoint, data, distributed, memory, precision
from .compiled import compile_step
from .config import Config, dump, eval_query, eval_ways, validate
from .data.episodes import DeviceEpisodes
from .errors import FewshotError
from .evaluate import evaluate
from .files import Unchanged, write_text
from .loop import Loop, on_terminal
from .optim import clip_gradients, make_optimizer, set_schedule_length
from .runs import (MetricsLog, RunLock, clean_failed_start, clean_stale_files, data_location, peak_rss_mb,
                   prepare_run, read_config)
from .tasks import Regression, better

# device types on which the episodes are built on the device itself (tests add "cpu" to run that path)
EPISODES_ON_DEVICE = ("cuda",)
# the settings that make a checkpoint another run's, not this one's
IDENTITY_KEYS = ("preset", "algorithm", "model", "dataset")
# the settings `train(out=RUN, resume=True, ...)` may change: the length of the schedule
RESUME_KEYS = ("steps",)

__all__ = ["train", "initial_weights", "device_of", "default_threads", "RESUME_KEYS"]


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


def default_threads():
    """torch threads when neither --threads nor the config's `threads` says: one per
    core this process may run on (idle OpenMP threads sleep, see fewshot/__init__.py)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _extended(config, out, steps):
    """`config` with `steps` (a resume's new length), and the line that says what changed;
    refuses a length the run has already passed."""
    if steps is None or steps == config.steps:
        return config, None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise FewshotError(f"--steps must be a whole number >= 1, got {steps!r}")
    done = 0
    if (out / "last.pt").exists():
        done = checkpoint.load(out / "last.pt").get("step", 0)
    if steps < done:
        raise FewshotError(f"{out} is already at step {done}; --steps gives the run's new total length, so it "
                           f"must be at least {done} (e.g. --steps {done + config.steps})")
    changed = config.replace(steps=steps)
    schedule = {"cosine": f"the cosine schedule now spans {steps} steps",
                "linear": f"the linear schedule now spans {steps} steps"}.get(
        config.lr_schedule, "the learning-rate schedule does not depend on steps")
    return changed, (f"resuming {out} at step {done}: steps {config.steps} -> {steps} (the only setting a "
                     f"resume changes); {schedule}")


def train(config: Config | Mapping | None = None, out: str | Path | None = None, resume: bool = False,
          device: str = "cpu", progress: bool = True, stop_after: int | None = None, threads: int | None = None,
          procs: int = 1, time_limit: float | None = None, steps: int | None = None) -> dict:
    """Meta-train into run folder `out`; with `resume`, continue the run there.
    `steps` (with `resume` only) extends or shortens the run to that many steps in all:
    the one setting a resume may change (RESUME_KEYS).
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
    if steps is not None and not resume:
        raise FewshotError("--steps goes with --resume (it extends a run); a new run takes its length from "
                           "the config: --set steps=N")
    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run folder
    created, extension = None, None
    if resume:
        out = prepare_run(out, resume=True)[0] if leader else Path(out)
        config, extension = _extended(read_config(out), Path(out), steps)
    elif config is None:
        raise FewshotError("train() needs a config (fewshot.load_preset(NAME), or a dict of keys), or resume=True "
                           "to continue the run in `out`")
    config = validate(config)
    _check_procs(procs, config)
    memory.check_training(config, device_of(device))
    out = Path(out)
    # loaded (and a checkpoint that does not fit refused) before the run folder exists; a resumed
    # run that was killed before its first checkpoint starts from the same --init weights again
    initial = initial_weights(config) if config.init and not (resume and (out / "last.pt").exists()) else None
    if not resume and leader:
        out, created = prepare_run(out, resume=False)
    lock, failed, kept = None, False, None
    try:
        lock = RunLock(out) if leader else None
        if leader:
            clean_stale_files(out)
            if extension:
                kept = Unchanged(out / "config.yaml", out / "last.pt")
                write_text(out / "config.yaml", dump(config))
                print(extension, flush=True)
        threads = threads or config.threads or (max(1, default_threads() // procs) if procs > 1 else None)
        if procs > 1:
            # import once here: bad data is refused before any process starts
            data.load(config, progress and sys.stderr.isatty())
            result = distributed.spawn(_train_worker, procs, config, out, resume, device, progress, stop_after,
                                       threads, time_limit, initial)
            return {**result, "algorithm": None}
        return _train_process(config, out, resume, device, progress, stop_after, threads, time_limit, initial)
    except BaseException:
        failed = lock is not None and not resume
        if kept is not None:
            kept.restore()  # the extension failed: config.yaml says what last.pt holds, as before
        raise
    finally:
        if lock:
            lock.release()
        if failed and not _trained(out):  # a fresh start that failed before its first step leaves nothing behind
            clean_failed_start(out, created)


def _check_procs(procs, config):
    if procs > config.meta_batch:  # a process without a task has no gradient to give
        raise FewshotError(f"--procs {procs} splits a meta-batch of {config.meta_batch} tasks, so a process would "
                           f"have no task; use --procs {config.meta_batch} or fewer, or raise meta_batch "
                           f"(--set meta_batch={procs})")


def _train_worker(*args):
    """_train_process in a --procs worker: what it returns, less the algorithm (it stays there)."""
    result = _train_process(*args)
    return {name: value for name, value in result.items() if name != "algorithm"}


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
    _check_procs(size, config)
    if device.type == "cuda" and size > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return _train(config, out, resume, device, progress and rank == 0, stop_after, rank, size, time_limit, initial)


def _samplers(config, device, terminal):
    """(dataset, train sampler, validation sampler); on CUDA, the image samplers build
    their tasks on the device from one uint8 copy of the dataset there."""
    dataset, refs = data.load(config, terminal)
    train_sampler = data.sampler(config, dataset, refs, "train", config.seed)
    val_sampler = data.sampler(config, dataset, refs, "val", config.eval_seed, query=eval_query(config),
                               ways=eval_ways(config))
    if (device.type in EPISODES_ON_DEVICE and isinstance(train_sampler, data.EpisodeSampler)
            and DeviceEpisodes.fits(train_sampler, device)):
        train_sampler = DeviceEpisodes(train_sampler, device)
        val_sampler = DeviceEpisodes(val_sampler, device, images=train_sampler.images)
    return dataset, train_sampler, val_sampler


def _train(config, out, resume, device, progress, stop_after, rank=0, size=1, time_limit=None, initial=None):
    leader = rank == 0
    terminal = on_terminal(progress)
    dataset, train_sampler, val_sampler = _samplers(config, device, terminal)
    preprocessing = data.preprocessing(dataset, config)
    where = data_location(config)  # in every checkpoint: `fewshot eval` finds the data from anywhere
    torch.manual_seed(config.seed)
    algorithm = algorithms.build(config).to(device)
    optimizer, schedule = make_optimizer(algorithm, config)
    precision.configure(config.precision, device)
    meta_gradient = compile_step(algorithm, config)  # algorithm.meta_gradient itself unless `compile: true`
    step, best, saved_step = 0, None, None
    fresh = not (resume and (out / "last.pt").exists())
    if not fresh:
        state = checkpoint.load(out / "last.pt")
        _load_state(state, config, out, algorithm, optimizer, schedule)
        step, best, saved_step = state["step"], state["best"], state["step"]
        if state["config"].steps != config.steps:  # a resume that extends (or shortens) the run
            set_schedule_length(optimizer, schedule, config.steps, step)
    elif initial is not None:
        algorithm.load_state_dict(initial)
    metric = algorithm.family.metric_name
    # sinusoid tasks hold points, not images: their rows count points per second
    per_s = "points_per_s" if isinstance(algorithm.family, Regression) else "images_per_s"
    # LEO's reference replaces a non-finite meta-batch's gradient by an L2-only one and
    # counts the step (nonfinite_steps); for every other algorithm a non-finite loss ends the run
    allow_nonfinite = config.algorithm == "leo"
    total, meta_batch = config.steps, config.meta_batch
    log_every, val_every, save_every = config.log_every, config.val_every, config.save_every
    window, checked = [], 0  # window: (step, result) since the last log row; checked: its finite prefix
    logs = []  # the metrics log, opened in the loop's first critical section

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

    def save(name="last.pt"):
        nonlocal saved_step
        check_window()
        if leader:
            if not bool(torch.stack([p.detach().isfinite().all() for p in algorithm.parameters()]).all()):
                raise nonfinite(loop.step, "the weights")
            checkpoint.save(out / name, config=config, algorithm=algorithm.state_dict(),
                            optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                            rng=torch.get_rng_state(), step=loop.step, best=best, preprocessing=preprocessing,
                            data_location=where)
            if name == "last.pt":
                saved_step = loop.step

    part = distributed.share(meta_batch, rank, size) if size > 1 else None
    batches = data.Prefetcher(train_sampler, step, total, meta_batch, part,
                              pin=device.type == "cuda" and not isinstance(train_sampler, DeviceEpisodes))
    # several processes agree on the clock at log rows only (an all-reduce is a host sync)
    loop = Loop(step, total, save, desc=f"train {config.preset or ''}", progress=progress, leader=leader,
                saved=out / "last.pt", resume=f"fewshot train --resume {out}", time_limit=time_limit,
                stop_after=stop_after, agree=distributed.agree,
                clock_due=lambda at: size == 1 or at % log_every == 0,
                stop_together=distributed.stop_signal if size > 1 else None)
    first_step = step

    def start():
        if leader:
            if fresh and not (out / "config.yaml").exists():
                write_text(out / "config.yaml", dump(config))
            logs.append(MetricsLog(out, loop.step))
        if fresh:
            save()  # step 0: a run killed before its first periodic save resumes from here

    def meta_step():
        nonlocal window, checked, best
        tasks = [t.to(device) for t in next(batches)]
        algorithm.train()
        optimizer.zero_grad(set_to_none=True)
        try:
            with precision.autocast(config.precision, device):
                result = meta_gradient(tasks, loop.step)
        except torch.OutOfMemoryError:
            if loop.step != first_step:
                raise
            raise FewshotError(_out_of_memory(config, device, len(tasks))) from None
        if size > 1:
            result = distributed.reduce_meta_gradient(algorithm.parameters(), result, len(tasks), meta_batch)
        result = algorithm.finish_meta_gradient(result)
        clip_gradients(algorithm.parameters(), config.grad_clip_value, config.grad_clip_norm)
        with loop.signals:  # the weights and the step number change together
            optimizer.step()
            schedule.step()
            loop.advance()
            at = loop.step
            # kept as they are (floats or 0-dim tensors) until the log row; detached, so no graph outlives its step
            window.append((at, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in result.items()}))
            validate_now = at % val_every == 0 or at == total
            if at % log_every == 0 or validate_now:
                values = _host([r[key] for _, r in window for key in ("loss", metric)])  # the one sync
                elapsed = time.perf_counter() - window_start[0]  # after it: the device's work is done
                check_window(values[0::2])
                if leader:
                    row = _row(at, values[0::2], values[1::2], elapsed, time.perf_counter() - loop.started,
                               optimizer.param_groups[0]["lr"], meta_batch,
                               sum(t.images for t in tasks) * size, device, per_s)
                    if validate_now:
                        val = evaluate(algorithm, val_sampler, config.val_tasks, device=device)
                        row.update(val_metric=val["mean"], val_ci95=val["ci95"])
                        if better(algorithm.family, val["mean"], best):
                            best = val["mean"]
                            save("best.pt")
                    logs[0].write(row)
                    loop.say(_format_row(row, metric))
                    if loop.terminal:
                        loop.bar.set_postfix(loss=f"{row['loss']:.3f}", **{metric[:3]: f"{row['metric']:.3f}"})
                window, checked, window_start[0] = [], 0, time.perf_counter()
            reached = leader and validate_now and _reached(algorithm.family, best, config.stop_at_val)
            if validate_now and distributed.agree(reached):  # every rank knows validate_now: no sync otherwise
                save()
                loop.say(f"stopped at step {at}: validation {metric} reached {config.stop_at_val} "
                         f"{time.perf_counter() - loop.started:.0f} s after start (stop_at_val); saved "
                         f"{out / 'last.pt'}")
                return "target"
            if at % save_every == 0 or at == total:
                save()
        return None

    window_start = [time.perf_counter()]
    try:
        ended = loop.run(meta_step, start)
    finally:
        batches.close()
    return {"out": str(out), "step": loop.step, "best": best, "stopped": ended["stopped"],
            "reason": ended["reason"], "signal": ended["signal"], "algorithm": algorithm}


def _load_state(state, config, out, algorithm, optimizer, schedule):
    """Restore a run's last.pt into the freshly built objects, refusing another run's checkpoint."""
    path = out / "last.pt"
    was = state["config"]  # a Config: checkpoint.load refuses a checkpoint without one
    differ = [key for key in IDENTITY_KEYS if getattr(was, key) != getattr(config, key)]
    if differ:
        theirs = ", ".join(f"{key} {getattr(was, key)!r}" for key in differ)
        ours = ", ".join(f"{key} {getattr(config, key)!r}" for key in differ)
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
    chunk = max(1, (config.tasks_per_pass or tasks) // 2)
    return (f"the meta-batch does not fit in the memory of {device} ({tasks} tasks per pass at the first step); "
            f"set tasks_per_pass={chunk} (--set tasks_per_pass={chunk}: the same gradient, in chunks)")


def _host(values):
    """Floats of a list of floats and 0-dim tensors: one transfer for all the tensors."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [float(v) for v in values]
    read = iter(torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors]).tolist())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _row(step, losses, metrics, elapsed, since_start, lr, meta_batch, inputs_per_step, device, per_s="images_per_s"):
    """A metrics row; `per_s` names the inputs counted: images_per_s, or points_per_s for regression."""
    steps = len(losses)
    row = {"step": step, "loss": _finite_mean(losses), "metric": _finite_mean(metrics),
           "nonfinite_steps": sum(not math.isfinite(v) for v in losses), "lr": lr,
           "sec_per_step": elapsed / steps, "tasks_per_s": meta_batch * steps / elapsed,
           per_s: inputs_per_step * steps / elapsed, "elapsed_s": since_start,
           "peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return row


def initial_weights(config):
    """The weights of checkpoint `config.init`, checked to fit `config`'s model and algorithm."""
    state = checkpoint.load(config.init)
    weights = state.get("algorithm")
    if not isinstance(weights, dict):
        raise FewshotError(f"{config.init} holds no trained weights; give a best.pt or last.pt of `fewshot train`")
    algorithm = algorithms.build(config)
    weights, expected = algorithm.weights_only(weights), algorithm.weights_only(algorithm.state_dict())
    problems = [f"{name} missing there" for name in expected if name not in weights]
    problems += [f"{name} not used here" for name in weights if name not in expected]
    problems += [f"{name} is {tuple(weights[name].shape)} there, {tuple(value.shape)} here"
                 for name, value in expected.items() if name in weights and weights[name].shape != value.shape]
    if problems:
        was = state["config"]  # checkpoint.load refuses a checkpoint without one
        raise FewshotError(f"--init {config.init} ({was.algorithm}, {was.model}, {was.ways}-way)"
                           f" does not fit this run ({config.algorithm}, {config.model}, {config.ways}-way): "
                           f"{len(problems)} tensors differ ({'; '.join(problems[:3])}); start from a checkpoint "
                           f"of the same algorithm and network")
    return weights


def _reached(family, best, target):
    return target is not None and best is not None and (best >= target if family.higher_is_better else best <= target)


def _mean(rows, key):
    """The mean over the steps with a finite value (LEO skips non-finite meta-batches)."""
    return _finite_mean(_host([r[key] for r in rows]))


def _finite_mean(values):
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def _format_row(row, metric):
    text = (f"step {row['step']:>6}  loss {row['loss']:.4f}  {metric} {row['metric']:.4f}  "
            f"{row['sec_per_step']:.3f} s/step  {row['tasks_per_s']:.1f} tasks/s  "
            + (f"{row['images_per_s']:.0f} img/s" if "images_per_s" in row else f"{row['points_per_s']:.0f} points/s"))
    if row.get("nonfinite_steps"):
        text += f"  ({row['nonfinite_steps']} non-finite steps: regularization only)"
    if "val_metric" in row:
        text += f"  val {metric} {row['val_metric']:.4f} +- {row['val_ci95']:.4f}"
    if "peak_rss_mb" in row:
        text += f"  peak {row['peak_rss_mb']:.0f} MB RSS"
    if "peak_gpu_mb" in row:
        text += f", {row['peak_gpu_mb']:.0f} MB GPU"
    return text
