"""Run folders: creating and reopening them (and refusing other runs' folders), the
lock that keeps one process per folder, the metrics log, and where a run's data was.

A run folder holds config.yaml, metrics.jsonl / metrics.csv, last.pt and best.pt;
`fewshot embed` keeps its metrics here too, beside pretrain.pt.
"""
import csv
import fcntl
import io
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

from .config import Config, complete, validate
from .errors import FewshotError
from .files import write_text
from .reading import parse_yaml, reason

CSV_COLUMNS = ["step", "loss", "metric", "val_metric", "val_ci95", "lr", "sec_per_step",
               "tasks_per_s", "images_per_s", "points_per_s", "elapsed_s", "nonfinite_steps", "peak_rss_mb",
               "peak_gpu_mb"]
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv")


class RunLock:
    """An exclusive lock on a run folder, held until release() or the process ends.
    The lock file is removed on release; a file left by a killed process is reused."""

    def __init__(self, folder: str | Path) -> None:
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

    def release(self) -> None:
        if self.handle.closed:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.handle.close()


def prepare_run(out: str | Path, resume: bool) -> tuple[Path, Path | None]:
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


def clean_failed_start(out: Path, created: Path | None) -> None:
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


def clean_stale_files(out: str | Path) -> None:
    """Temporary files of writes a killed process never finished (we hold the lock: no one else writes here)."""
    for path in Path(out).glob(".*.tmp"):
        try:
            path.unlink()
        except OSError:
            pass


def read_config(out: str | Path) -> Config:
    """A run folder's config.yaml, checked."""
    path = Path(out) / "config.yaml"
    try:
        config = parse_yaml(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping of keys to values")
        config = complete(config)
        validate(config)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, FewshotError) as error:
        raise FewshotError(f"{path} is damaged ({reason(error)}); restore it from a copy, or start a new run "
                           f"in another folder (with --init {Path(out) / 'last.pt'} to keep the weights)") from None
    return config


class MetricsLog:
    """metrics.jsonl (every field) and metrics.csv (fixed columns), appended row by row."""

    def __init__(self, folder: str | Path, keep_until_step: int) -> None:
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

    def write(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore").writerow(row)


def _read_rows(path, warn=True):
    """(rows, numbers of the unreadable lines) of a metrics.jsonl; a line torn by a crash, or
    one that is not a metrics row, is skipped, with a warning when `warn`."""
    if not path.exists():
        return [], []
    rows, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not _is_row(row):
                raise ValueError
        except (ValueError, RecursionError):
            torn.append(number)
            if warn:
                print(torn_warning(path, number), file=sys.stderr)
            continue
        rows.append(row)
    return rows, torn


def torn_warning(path: str | Path, number: int) -> str:
    return f"fewshot: warning: {path} line {number} is torn or not a metrics row; skipped"


def _is_row(row):
    """Whether a parsed line is a metrics row: a step, numbers only (NaN included: a diverged
    step is logged as one) in the fields fewshot writes, a validation's mean with its interval."""
    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return (isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool)
            and ("val_metric" in row) == ("val_ci95" in row)
            and all(number(value) for name, value in row.items() if name in CSV_COLUMNS))


def read_metrics(folder: str | Path, torn: list[int] | None = None) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl; the numbers of lines that are not rows go into
    `torn` (a list) when given, else each is warned about."""
    rows, skipped = _read_rows(Path(folder) / "metrics.jsonl", warn=torn is None)
    if torn is not None:
        torn += skipped
    return rows


def cumulative_seconds(rows: list[dict]) -> list[tuple[dict, float, int]]:
    """Each metrics row with the training seconds up to it, over every process that wrote the
    run, and how many processes had run by then. Each process's clock (`elapsed_s`) starts at
    0; its rows carry the time it started (`process_started`), whose change marks a resume
    (in rows from before that field, a clock that goes back marks it). A process's time after
    its last row is not counted. Rows without a clock are left out."""
    finished, current, started, processes, timed = 0.0, 0.0, None, 0, []
    for row in rows:
        if not isinstance(row.get("elapsed_s"), (int, float)):
            continue
        mark = row.get("process_started")
        if processes == 0 or (mark != started if mark is not None else row["elapsed_s"] < current):
            finished, processes = finished + current, processes + 1
        current, started = row["elapsed_s"], mark
        timed.append((row, finished + current, processes))
    return timed


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def portable(path: str | Path) -> str:
    """An absolute path with the user's home folder written ~, as checkpoints record it: a
    run folder kept in a repository names no machine's home (read back with `local`)."""
    path, user = Path(path), Path.home()
    return f"~/{path.relative_to(user)}" if path.is_relative_to(user) and path != user else str(path)


def local(recorded: str) -> Path:
    """A path as checkpoints record it (`portable`), on this machine."""
    return Path(recorded).expanduser()


def data_location(config: Config) -> dict[str, str] | None:
    """Where `config.data` is on this machine, recorded in a run's checkpoints so that the
    run can be evaluated from another folder or with another FEWSHOT_HOME: the absolute
    path of the folder or raw copy it names, and the FEWSHOT_HOME it was found under
    (both `portable`)."""
    from .data import kind
    from .data.images import home
    if kind(config.dataset).generated or config.data is None:
        return None
    path = Path(config.data).expanduser()
    if not path.exists():
        path = home() / str(config.data)  # a dataset name under FEWSHOT_HOME (data.resolve checked it)
    return {"data": str(config.data), "path": portable(path.resolve()), "fewshot_home": portable(home().resolve())}


def recorded_data(config: Config, location: dict[str, str] | None) -> str | None:
    """The `data` to load a checkpoint's dataset with here: its config's own `data` where
    that still names something from here, else the absolute path recorded at training."""
    from .data import kind
    from .data.images import home, is_prepared
    spec = config.data
    if kind(config.dataset).generated or spec is None or not isinstance(location, dict):
        return spec
    if Path(spec).expanduser().exists() or is_prepared(home() / str(spec)):
        return spec
    recorded = local(location["path"])
    if recorded.exists():
        return str(recorded)
    raise FewshotError(f"the data this run was trained on, {spec!r}, is not found from here: it was "
                       f"{location['path']} (FEWSHOT_HOME={location['fewshot_home']}); set "
                       f"FEWSHOT_HOME={location['fewshot_home']} if that folder is on this machine, or give "
                       f"the dataset with --data PATH")
