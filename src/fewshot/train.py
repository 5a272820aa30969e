"""Meta-training, shared by every algorithm: `train` opens the run (folder, lock, the
processes of `--procs`); in each process a `Trainer` builds the data, algorithm, optimizer
and the checkpoint to resume from, and loop.py's resumable loop calls its `meta_step` until
the run ends. Read `Trainer.meta_step` top to bottom for a step: a meta-batch's gradient,
the optimizer step, then the log row, validation and checkpoints due. What the trainer
carries from step to step, besides the checkpoint's contents, is `Carried`.

Every task is a pure function of (seed, step, position) and the checkpoint carries weights,
optimizer, schedule, RNG and step, so a resumed run ends with the same weights
as an uninterrupted one.

The loop never waits for the device: a step's metrics stay tensors until the next log
row reads the whole window at once, and on CUDA the episodes are built on the device.

Changing a run on resume. `train(out=RUN, resume=True, steps=N)` (`fewshot train --resume
RUN --steps N`) continues a finished or stopped run up to N steps in all; schedules that
span the run follow the new length as optim.py describes. `changes={"compile": True}`
(`--set compile=true`) continues it with a step computed another way: the same gradient
to rounding (tests/test_compiled.py, tests/algorithms/test_batched.py), e.g. a CPU run
continued compiled, or on a GPU batched. Those are the only settings a resume may change
(RESUME_KEYS); config.yaml is rewritten with them.
"""
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import algorithms, checkpoint, data, distributed, memory, precision
from .compiled import compile_step
from .config import Config, dump, eval_query, eval_ways, validate
from .data.episodes import DeviceEpisodes, Task
from .device import choose_device, set_threads
from .errors import FewshotError, whole_number
from .evaluate import evaluate
from .files import Unchanged, write_text
from .loop import Loop, on_terminal
from .optim import clip_gradients, make_optimizer, set_schedule_length
from .reading import reason
from .runs import (MetricsLog, RunLock, clean_failed_start, clean_stale_files, data_location, peak_rss_mb,
                   prepare_run, read_config)
from .tasks import Regression, better

# device types on which the episodes are built on the device itself (tests add "cpu" to run that path)
EPISODES_ON_DEVICE = ("cuda",)
# the settings that make a checkpoint another run's, not this one's
IDENTITY_KEYS = ("preset", "algorithm", "model", "dataset")
# the settings `train(out=RUN, resume=True, ...)` may change: the length of the schedule, and
# how a step is computed, not what it computes
RESUME_KEYS = ("steps", "compile", "batch_tasks", "tasks_per_pass")

__all__ = ["train", "initial_weights", "default_threads", "RESUME_KEYS"]


def default_threads() -> int:
    """torch threads when neither --threads nor the config's `threads` says: one per
    core this process may run on (idle OpenMP threads sleep, see fewshot/__init__.py)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _resumed(config, out, changes):
    """The run's `config` with a resume's `changes` (RESUME_KEYS only), and the line that
    says what changed (None: nothing did); refuses a length the run has already passed."""
    refused = sorted(set(changes) - set(RESUME_KEYS))
    if refused:
        raise FewshotError(f"a resume may change only {', '.join(RESUME_KEYS)} (the length, and how a step is "
                           f"computed); {', '.join(refused)} would make it another run: start one with --out")
    checked = validate({**config.to_dict(), **changes})  # the values refused as a new run's would be
    changed = config.replace(**{name: getattr(checked, name) for name in changes})
    differ = [name for name in RESUME_KEYS if getattr(changed, name) != getattr(config, name)]
    if not differ:
        return config, None
    done = checkpoint.load(out / "last.pt").get("step", 0) if (out / "last.pt").exists() else 0
    if changed.steps < done:
        raise FewshotError(f"{out} is already at step {done}; --steps gives the run's new total length, so it "
                           f"must be at least {done} (e.g. --steps {done + config.steps})")
    said = [f"{name} {json.dumps(getattr(config, name))} -> {json.dumps(getattr(changed, name))}" for name in differ]
    if "steps" in differ:
        said.append({"cosine": f"the cosine schedule now spans {changed.steps} steps",
                     "linear": f"the linear schedule now spans {changed.steps} steps"}.get(
            config.lr_schedule, "the learning-rate schedule does not depend on steps"))
    return changed, f"resuming {out} at step {done}: {'; '.join(said)}"


def train(config: Config | Mapping | None = None, out: str | Path | None = None, resume: bool = False,
          device: str | None = "cpu", progress: bool = True, stop_after: int | None = None, threads: int | None = None,
          procs: int = 1, time_limit: float | None = None, steps: int | None = None,
          changes: Mapping | None = None) -> dict:
    """Meta-train into run folder `out`; with `resume`, continue the run there.
    `steps` (with `resume` only) extends or shortens the run to that many steps in all;
    `changes` (with `resume` only) sets the others of RESUME_KEYS, e.g. {"compile": True}.
    `procs` > 1 splits each meta-batch across that many local processes.
    `threads` overrides the config's torch thread count (per process).
    `device`: cpu, cuda, cuda:N or mps; None, the best device present (device.choose_device).
    `time_limit` (seconds) stops the run cleanly, resumable, once that much time has passed.
    `stop_after` ends the run after that step as an interruption would (for tests).
    Returns {"out", "step", "best", "stopped", "reason", "signal", "algorithm"}: "reason"
    says why a run ended early ("signal", "time_limit", "target", "stop_after"), and
    "signal" is the number of the signal that stopped it (the CLI exits 128 + it)."""
    whole_number(procs, 1, "--procs")
    if threads is not None:
        whole_number(threads, 1, "--threads")
    if steps is not None and not resume:
        raise FewshotError("--steps goes with --resume (it extends a run); a new run takes its length from "
                           "the config: --set steps=N")
    if steps is not None:
        whole_number(steps, 1, "--steps")
    if steps is not None and changes and changes.get("steps", steps) != steps:
        raise FewshotError(f"--steps {steps} and --set steps={changes['steps']} disagree; give one")
    if changes and not resume:
        raise FewshotError("changes go with resume=True (they change a run being continued); a new run takes "
                           "them from its config")
    device = str(choose_device(device)[0])  # checked before any folder exists; processes get the name
    leader = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run folder
    created, extension = None, None
    if resume:
        out = prepare_run(out, resume=True)[0] if leader else Path(out)
        config, extension = _resumed(read_config(out), Path(out),
                                     {**(changes or {}), **({} if steps is None else {"steps": steps})})
    elif config is None:
        raise FewshotError("train() needs a config (fewshot.load_preset(NAME), or a dict of keys), or resume=True "
                           "to continue the run in `out`")
    config = validate(config)
    _check_procs(procs, config)
    memory.check_training(config, device)
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
                                       threads, time_limit, initial, backend=distributed.backend_for(device))
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
    set_threads(threads)
    device = choose_device(device)[0]
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


@dataclass
class Carried:
    """What meta-training carries from one step to the next, besides what a checkpoint holds
    (weights, optimizer, schedule, RNG, the step number)."""
    best: float | None  # the best validation metric so far; best.pt holds its weights
    saved_step: int | None  # the step last.pt holds (None: none written yet), named by a non-finite stop
    # the steps since the last log row, (step, result) with results as they came (floats or
    # 0-dim tensors): read from the device once per row
    window: list = field(default_factory=list)
    checked: int = 0  # how many of the window's losses are known to be finite
    window_start: float = 0.0  # when the window began (time.perf_counter)
    log: MetricsLog | None = None  # opened when the loop starts (rank 0)


def _train(config, out, resume, device, progress, stop_after, rank=0, size=1, time_limit=None, initial=None):
    return Trainer(config, out, resume, device, progress, stop_after, rank, size, time_limit, initial).run()


class Trainer:
    """One process's meta-training: built from the config (and from last.pt when resuming),
    then run by loop.Loop, which calls `start` once and `meta_step` until the run ends."""

    def __init__(self, config: Config, out: Path, resume: bool, device: torch.device, progress: bool,
                 stop_after: int | None, rank: int, size: int, time_limit: float | None,
                 initial: dict[str, torch.Tensor] | None) -> None:
        self.config, self.out, self.device, self.rank, self.size = config, out, device, rank, size
        self.leader = rank == 0
        # the data: train and validation tasks (on CUDA built on the device)
        dataset, self.train_sampler, self.val_sampler = _samplers(config, device, on_terminal(progress))
        self.preprocessing = data.preprocessing(dataset, config)
        self.where = data_location(config)  # in every checkpoint: `fewshot eval` finds the data from anywhere
        # the algorithm, its optimizer, and the meta-step (algorithm.meta_gradient unless `compile: true`)
        torch.manual_seed(config.seed)
        self.algorithm = algorithms.build(config).to(device)
        self.optimizer, self.schedule = make_optimizer(self.algorithm, config)
        precision.configure(config.precision, device)
        self.compute_meta_gradient = compile_step(self.algorithm, config)
        # where the run stands: a fresh start, or last.pt's step
        self.fresh = not (resume and (out / "last.pt").exists())
        step, self.carried = 0, Carried(best=None, saved_step=None)
        if not self.fresh:
            state = checkpoint.load(out / "last.pt")
            _load_state(state, config, out, self.algorithm, self.optimizer, self.schedule)
            step, self.carried = state["step"], Carried(best=state["best"], saved_step=state["step"])
            if state["config"].steps != config.steps:  # a resume that extends (or shortens) the run
                set_schedule_length(self.optimizer, self.schedule, config.steps, step)
        elif initial is not None:
            self.algorithm.load_state_dict(initial)
        self.first_step = step
        self.metric = self.algorithm.family.metric_name
        # sinusoid tasks hold points, not images: their rows count points per second
        self.per_s = "points_per_s" if isinstance(self.algorithm.family, Regression) else "images_per_s"
        # LEO's reference replaces a non-finite meta-batch's gradient by an L2-only one and
        # counts the step (nonfinite_steps); for every other algorithm a non-finite loss ends the run
        self.allow_nonfinite = self.algorithm.skips_nonfinite_steps
        part = distributed.share(config.meta_batch, rank, size) if size > 1 else None
        self.batches = data.Prefetcher(self.train_sampler, step, config.steps, config.meta_batch, part,
                                       pin=device.type == "cuda" and not isinstance(self.train_sampler,
                                                                                    DeviceEpisodes))
        # several processes agree on the clock at log rows only (an all-reduce is a host sync)
        self.loop = Loop(step, config.steps, self.save, desc=f"train {config.preset or ''}",
                         progress=progress, leader=self.leader, saved=out / "last.pt",
                         resume=f"fewshot train --resume {out}", time_limit=time_limit, stop_after=stop_after,
                         agree=distributed.agree, clock_due=lambda at: size == 1 or at % config.log_every == 0,
                         stop_together=distributed.stop_signal if size > 1 else None)

    def run(self) -> dict:
        self.carried.window_start = time.perf_counter()
        try:
            ended = self.loop.run(self.meta_step, self.start)
        finally:
            self.batches.close()
        return {"out": str(self.out), "step": self.loop.step, "best": self.carried.best,
                "stopped": ended["stopped"], "reason": ended["reason"], "signal": ended["signal"],
                "algorithm": self.algorithm}

    def start(self) -> None:
        if self.leader:
            if self.fresh and not (self.out / "config.yaml").exists():
                write_text(self.out / "config.yaml", dump(self.config))
            self.carried.log = MetricsLog(self.out, self.loop.step)
        if self.fresh:
            self.save()  # step 0: a run killed before its first periodic save resumes from here

    def meta_step(self) -> str | None:
        """One meta-step, then the log row, validation and checkpoints due at the new step.
        Returns None, or "target" where validation reached `stop_at_val` (saved and said)."""
        config, loop, carried = self.config, self.loop, self.carried
        tasks = [t.to(self.device) for t in next(self.batches)]
        result = self.meta_gradient(tasks)
        with loop.signals:  # the weights and the step number change together
            self.optimizer.step()
            self.schedule.step()
            loop.advance()
            at = loop.step
            # detached, so that no graph outlives its step
            carried.window.append((at, {k: v.detach() if isinstance(v, torch.Tensor) else v
                                        for k, v in result.items()}))
            validate_now = at % config.val_every == 0 or at == config.steps
            if at % config.log_every == 0 or validate_now:
                self.log_row(at, tasks, validate_now)
            reached = self.leader and validate_now and _reached(self.algorithm.family, carried.best,
                                                                 config.stop_at_val)
            if validate_now and distributed.agree(reached):  # every rank knows validate_now: no sync otherwise
                self.save()
                loop.say(f"stopped at step {at}: validation {self.metric} reached {config.stop_at_val} "
                         f"{time.perf_counter() - loop.started:.0f} s after start (stop_at_val); saved "
                         f"{self.out / 'last.pt'}")
                return "target"
            if at % config.save_every == 0 or at == config.steps:
                self.save()
        return None

    def meta_gradient(self, tasks: list[Task]) -> dict:
        """The meta-batch's gradient in .grad, summed over processes, finished and clipped;
        returns what the algorithm reports of the step (loss, metric)."""
        self.algorithm.train()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with precision.autocast(self.config.precision, self.device):
                result = self.compute_meta_gradient(tasks, self.loop.step)
        except torch.OutOfMemoryError:
            if self.loop.step != self.first_step:
                raise
            raise FewshotError(_out_of_memory(self.config, self.device, len(tasks))) from None
        if self.size > 1:
            result = distributed.reduce_meta_gradient(self.algorithm.parameters(), result, len(tasks),
                                                      self.config.meta_batch)
        result = self.algorithm.finish_meta_gradient(result)
        clip_gradients(self.algorithm.parameters(), self.config.grad_clip_value, self.config.grad_clip_norm)
        return result

    def log_row(self, at: int, tasks: list[Task], validate_now: bool) -> None:
        """The window's metrics, read in one host sync, as a log line and a metrics row (with a
        validation, and best.pt when it improved, where due); then a new window."""
        carried, loop = self.carried, self.loop
        values = _host([r[key] for _, r in carried.window for key in ("loss", self.metric)])  # the one sync
        elapsed = time.perf_counter() - carried.window_start  # after it: the device's work is done
        self.check_window(values[0::2])
        if self.leader:
            clock = (time.perf_counter() - loop.started, loop.started_at)
            row = _row(at, values[0::2], values[1::2], elapsed, clock, self.optimizer.param_groups[0]["lr"],
                       self.config.meta_batch,
                       sum(t.images for t in tasks) * self.size, self.device, self.per_s)
            if validate_now:
                val = evaluate(self.algorithm, self.val_sampler, self.config.val_tasks, device=self.device,
                               shift=self.config.eval_shift)
                row.update(val_metric=val["mean"], val_ci95=val["ci95"])
                if "by_alphabet" in val:  # Lake-style validation runs: which alphabets the error comes from
                    row["val_by_alphabet"] = val["by_alphabet"]
                if better(self.algorithm.family, val["mean"], carried.best):
                    carried.best = val["mean"]
                    self.save("best.pt")
            carried.log.write(row)
            loop.say(_format_row(row, self.metric))
            if loop.terminal:
                loop.bar.set_postfix(loss=f"{row['loss']:.3f}", **{self.metric[:3]: f"{row['metric']:.3f}"})
        carried.window, carried.checked, carried.window_start = [], 0, time.perf_counter()

    def check_window(self, losses: list[float] | None = None) -> None:
        """Stop on a non-finite loss in the window; `losses`: its values already read, else
        they are read here (one host transfer)."""
        carried = self.carried
        if not self.allow_nonfinite and carried.checked < len(carried.window):
            if losses is None:
                losses = [None] * carried.checked + _host([r["loss"] for _, r in carried.window[carried.checked:]])
            for (at, _), loss in zip(carried.window[carried.checked:], losses[carried.checked:]):
                if not math.isfinite(loss):
                    raise self.nonfinite(at, "the meta-loss")
        carried.checked = len(carried.window)

    def save(self, name: str = "last.pt") -> None:
        """Write checkpoint `name` of the current step (rank 0), once the window's losses and
        the weights are known to be finite."""
        self.check_window()
        if not self.leader:
            return
        if not bool(torch.stack([p.detach().isfinite().all() for p in self.algorithm.parameters()]).all()):
            raise self.nonfinite(self.loop.step, "the weights")
        checkpoint.save(self.out / name, config=self.config, algorithm=self.algorithm.state_dict(),
                        optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
                        rng=torch.get_rng_state(), step=self.loop.step, best=self.carried.best,
                        preprocessing=self.preprocessing, data_location=self.where)
        if name == "last.pt":
            self.carried.saved_step = self.loop.step

    def nonfinite(self, at: int, what: str) -> FewshotError:
        saved = self.carried.saved_step
        kept = (f"{self.out / 'last.pt'} still holds step {saved}, the last good checkpoint" if saved is not None
                else "no checkpoint was written")
        return FewshotError(f"{what} became non-finite at step {at}; stopped without saving, so {kept}; lower "
                            f"meta_lr or inner_lr, or set grad_clip_norm (--set), and train again")


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
        raise FewshotError(f"{path} does not fit this run's config.yaml ({reason(error)}); put this run's last.pt "
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
    exact = torch.float32 if tensors[0].device.type == "mps" else torch.float64  # MPS has no float64
    read = iter(torch.stack([t.detach().reshape(()).to(exact) for t in tensors]).tolist())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _row(step, losses, metrics, elapsed, clock, lr, meta_batch, inputs_per_step, device, per_s="images_per_s"):
    """A metrics row; `clock`: (seconds since this process started training, the wall-clock
    time it started); `per_s` names the inputs counted: images_per_s, or points_per_s for regression."""
    steps = len(losses)
    row = {"step": step, "loss": _finite_mean(losses), "metric": _finite_mean(metrics),
           "nonfinite_steps": sum(not math.isfinite(v) for v in losses), "lr": lr,
           "sec_per_step": elapsed / steps, "tasks_per_s": meta_batch * steps / elapsed,
           per_s: inputs_per_step * steps / elapsed, "elapsed_s": clock[0], "process_started": clock[1],
           "peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return row


def initial_weights(config: Config) -> dict[str, torch.Tensor]:
    """The weights of checkpoint `config.init`, checked to fit `config`'s model and algorithm."""
    state = checkpoint.load(config.init, run=True)
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
