"""The resumable step loop that meta-training (train.py) and `fewshot embed`'s supervised
pretraining both run through.

It owns what is the same for both: the step counter and its progress bar, log lines
(through the bar on a terminal, plain lines to a file or pipe), stop requests, the time
limit, `stop_after` (tests), and the save that ends a stopped run. The caller owns what
a step is and what a checkpoint holds.

Stopping. The first SIGINT or SIGTERM asks the run to stop; inside a critical section
(`with loop.signals:` — e.g. an optimizer step together with the step counter, a log
row with its validation, a checkpoint) the request waits for the section to end, so a
checkpoint never holds one step's weights under another step's number. The loop then
saves and returns with "signal" set (the CLI exits 128 + signal: 130, 143); signals
that arrive while it saves are ignored. A time limit or a step that ends the run itself
(e.g. a reached validation target) are normal ends.

Several processes (`--procs`, torchrun) must stop at the same step, or one would wait
forever for the others in a collective: there a signal only records the request
(`stop_together`), and at the end of every step the processes agree on whether any of
them (or the parent that spawned them) was asked to stop, then all save and return.
"""
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tqdm import tqdm


def on_terminal(progress: bool) -> bool:
    """Whether progress bars are drawn: asked for, and both output streams are a terminal
    (a log file or pipe gets plain lines instead)."""
    return progress and sys.stdout.isatty() and sys.stderr.isatty()


class StopRequested(Exception):
    pass


def take_over_stop_signals(handler: Callable[[int, FrameType | None], None]) -> dict:
    """Make `handler` the handler of SIGINT and SIGTERM, except of one this process was
    started ignoring (`nohup cmd &` from a script ignores SIGINT, so that a Ctrl-C at the
    terminal leaves it running; Python keeps that, and so do we). Returns the handlers
    replaced, for signal.signal to put back. Main thread only."""
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is not signal.SIG_IGN:
            previous[number] = signal.signal(number, handler)
    return previous


class Signals:
    """SIGINT and SIGTERM as stop requests. A request raises StopRequested at once,
    except inside `with signals:` (a critical section), where it waits for the
    section's end. The first signal is kept (for the exit status); later ones, and any
    once `stopping` is set (the final save is under way), are ignored. `deferred`: a
    request never raises; the loop asks for it at the end of each step."""

    def __init__(self, deferred: bool = False) -> None:
        self.received, self.depth, self.stopping, self.previous = None, 0, False, {}
        self.deferred = deferred

    def install(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            self.previous = take_over_stop_signals(self.handle)
        return self

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None or self.stopping:
            if self.received is None:
                self.received = number
            return
        self.received = number
        if self.depth == 0 and not self.deferred:
            raise StopRequested()

    def __enter__(self):
        self.depth += 1
        return self

    def __exit__(self, kind, value, traceback):
        self.depth -= 1
        if kind is None and self.depth == 0 and self.received is not None and not self.stopping \
                and not self.deferred:
            raise StopRequested()
        return False


class Loop:
    """Runs steps `step` .. `total` of a resumable run.

    `save()` writes the caller's checkpoint of the current step (`loop.step`); a stopped
    run calls it once before returning. `saved` and `resume` name that checkpoint and the
    command that continues the run, for the line a stop prints (None: print no such line,
    the caller says it). `agree(flag)` makes several processes agree on the clock, at the
    steps where `clock_due(step)` is true (an all-reduce is a host sync). `stop_together(number)`,
    for several processes: given the signal this process received (0: none), the one that
    stops them all at this step (0: go on); then signals only record a request."""

    def __init__(self, step: int, total: int, save: Callable[[], object], *, desc: str, progress: bool = True,
                 leader: bool = True, saved: str | Path | None = None, resume: str | None = None,
                 time_limit: float | None = None, stop_after: int | None = None,
                 agree: Callable[[bool], bool] = bool, clock_due: Callable[[int], bool] = lambda step: True,
                 stop_together: Callable[[int], int] | None = None) -> None:
        self.step, self.total, self.save, self.leader = step, total, save, leader
        self.saved, self.resume = saved, resume
        self.time_limit, self.stop_after, self.agree, self.clock_due = time_limit, stop_after, agree, clock_due
        # a progress bar only where it is drawn; a log file or pipe gets the log lines alone
        self.terminal = on_terminal(progress)
        self.bar = tqdm(total=total, initial=min(step, total), desc=desc, unit="step",
                        disable=not (self.terminal and leader), dynamic_ncols=True)
        self.stop_together = stop_together
        self.signals = Signals(deferred=stop_together is not None)
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        if self.leader:
            self.bar.write(text) if self.terminal else print(text, flush=True)

    def advance(self) -> None:
        """Count one step done; call it inside the step's critical section."""
        self.step += 1
        self.bar.update(1)

    def run(self, one_step: Callable[[], str | None], start: Callable[[], object] | None = None) -> dict:
        """Call `one_step()` until `total` steps are done; it runs one step (calling
        `advance()`) and returns None, or a reason that ends the run normally (it saved
        and said why). `start()`, if given, runs first, as a critical section.
        Returns {"step", "reason", "stopped", "signal"}: "reason" is None for a run that
        reached `total`, "signal", "time_limit" or "stop_after" for a stopped one (then
        "stopped" is true and the checkpoint is saved), or what `one_step` returned."""
        signals = self.signals.install()
        self.started, reason = time.perf_counter(), None
        self.started_at = round(time.time(), 3)  # names this process in its log rows (runs.cumulative_seconds)
        try:
            if start is not None:
                with signals:
                    start()
            while self.step < self.total:
                reason = one_step()
                if reason is not None:
                    break
                if self.stop_together is not None:
                    number = self.stop_together(int(signals.received or 0))
                    if number:
                        signals.received = signals.received or signal.Signals(number)
                        signals.stopping = True
                        raise StopRequested()
                if self.stop_after is not None and self.step >= self.stop_after:
                    reason, signals.stopping = "stop_after", True
                    raise StopRequested()
                if (self.time_limit is not None and self.clock_due(self.step)
                        and self.agree(time.perf_counter() - self.started > self.time_limit)):
                    reason, signals.stopping = "time_limit", True
                    raise StopRequested()
            signals.stopping = True  # done: a late signal changes nothing
        except (KeyboardInterrupt, StopRequested):
            signals.stopping = True  # further signals are ignored until the checkpoint is written
            reason = "signal" if signals.received is not None or reason is None else reason
            self.save()
            self._say_stopped(reason)
        finally:
            signals.restore()
            self.bar.close()
        stopped_by = signals.received if reason == "signal" else None
        if reason == "signal" and stopped_by is None:
            stopped_by = signal.SIGINT  # a KeyboardInterrupt outside the main thread's handler
        return {"step": self.step, "reason": reason, "stopped": reason in ("signal", "time_limit", "stop_after"),
                "signal": int(stopped_by) if stopped_by is not None else None}

    def _say_stopped(self, reason):
        if self.resume is None:
            return
        if reason == "time_limit":
            self.say(f"stopped at step {self.step}: the time limit of {self.time_limit / 60:g} minutes is reached; "
                     f"saved {self.saved}; continue with `{self.resume}`")
        elif reason == "signal":
            name = signal.Signals(self.signals.received).name if self.signals.received else "KeyboardInterrupt"
            self.say(f"stopped at step {self.step} by {name}; saved {self.saved}; continue with `{self.resume}`")
        else:
            self.say(f"stopped at step {self.step}; continue with `{self.resume}`")
