"""Atomic file writes: a crash mid-write never leaves a broken file behind. And the
guard every output option goes through, so that no output lands on a run's or a
dataset's own files, or on a file of the user's that it was not made for.

Atomic replacement is for regular files only. A character device (/dev/null, a
terminal) or a named pipe is written through, as the shell's `>` does, never replaced;
a symbolic link to a regular file has its target replaced atomically, the link kept
(a link to a device or a pipe, e.g. /dev/stdout, is written through); a block device
or a socket is refused.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FewshotError

# the files a run folder is made of (train.py, embed.py): an output of another kind must never replace them
RUN_FILES = {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", ".lock", "pretrain.pt",
             "pretrain-best.pt", "embed.json"}
# the files that mark a folder as a run (a training run, or fewshot embed's pretraining)
RUN_MARKERS = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "pretrain.pt")
DATASET_FILE = re.compile(r"^(index\.json|images-\d+\.npy|features-\d+\.npy|(train|val|test)_embeddings\.pkl)$")
# files whose contents are data, not text: a text output (--csv, --scores) never replaces one
DATA_SUFFIXES = {".pt", ".pth", ".npy", ".npz", ".pkl", ".pickle", ".zip", ".yaml", ".yml", ".jsonl", ".png",
                 ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".py"}


def _umask():
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def _destination(path):
    """(where to write, whether to write through it in place) for an output `path`."""
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path, os.path.islink(path)  # nothing there (or a dangling link, written through as `>` does)
    except OSError:
        return path, False  # reported by the write itself, with its path
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        kind = "block device" if stat.S_ISBLK(mode) else "socket"
        raise FewshotError(f"{path} is a {kind}, not a file; writing there would destroy what it holds or fail: "
                           f"give a file path")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return path, True
    if link and stat.S_ISREG(mode):
        real = Path(os.path.realpath(path))
        if not str(real).startswith("/proc/"):
            return real, False
        return path, True
    return path, False


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.
    The file gets the mode an ordinary open() would give it (0666 less the umask), not
    mkstemp's 0600. OS errors name `path`, never the temporary file. A device or a pipe
    is yielded as it is, to be written through (see the module docstring)."""
    path, through = _destination(Path(path))
    if through:
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:  # mkdir says "File exists": the real problem is a file where a folder belongs
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(blocking)) from None
        raise OSError(error.errno, error.strerror, str(path)) from None
    os.close(handle)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if error.filename in (tmp, None) or error.filename2 == str(path):
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Unchanged:
    """The bytes of `path`, put back by restore() unless `witness` (a file the same command
    rewrites once it has done something that `path` must then describe) changed since:
    a failing command leaves the files it changed as they were."""

    def __init__(self, path: str | Path, witness: str | Path) -> None:
        self.path, self.witness = Path(path), Path(witness)
        self.before, self.stamp = self.path.read_bytes(), _stamp(self.witness)

    def restore(self) -> None:
        try:
            if _stamp(self.witness) == self.stamp and self.path.read_bytes() != self.before:
                with atomic_path(self.path) as tmp:
                    Path(tmp).write_bytes(self.before)
        except OSError:
            pass  # the error that made us restore is the one to report


def _stamp(path):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape")


def write_bytes(path: str | Path, data: bytes) -> None:
    """`data` written as write_text writes text: in one stream, so a pipe takes it as well."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def holds_run(folder: str | Path) -> bool:
    """Whether `folder` holds a training run or a pretraining (its own files would be at stake)."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_MARKERS)


def check_output(path: str | Path, option: str, example: str, text: bool = True,
                 ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse an output path (`option` names it, `example` is a good file name) that is a
    folder, a run's own file, or a dataset's file; `text` outputs also refuse to replace
    an existing data file (a checkpoint, an image, an array), and, given `ours` (whether a
    file's text is one this output writes), any existing text file that is not theirs (ours(path) -> bool)."""
    path = Path(path)
    _destination(path)  # a block device or a socket: refused before any work
    if path.is_dir():
        raise FewshotError(f"{option} {path} is a folder; give a file name such as {path / example}")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise FewshotError(f"{option} {path}: {blocking} is a file, not a folder; choose another path")
    if path.name in RUN_FILES and (holds_run(path.parent) or path.exists()):
        raise FewshotError(f"{option} {path} is a file of the run in {path.parent}; writing there would destroy "
                           f"it; choose another path, e.g. {path.parent / example}")
    if DATASET_FILE.match(path.name) and (path.exists() or (path.parent / "index.json").is_file()):
        raise FewshotError(f"{option} {path} is a file of the dataset in {path.parent}; choose another path, "
                           f"e.g. {example}")
    if text and path.is_file() and path.suffix.lower() in DATA_SUFFIXES:
        raise FewshotError(f"{option} {path} exists and is not a text file ({path.suffix} data); it would be "
                           f"overwritten: choose another path, e.g. {path.parent / example}")
    if text and ours is not None and _regular(path) and not ours(path):
        raise FewshotError(f"{option} {path} exists and is not a file {option} writes (a file of yours, or of a "
                           f"dataset); it would be overwritten: choose another path, e.g. {path.parent / example}")
    if not text and path.is_file() and (path.suffix.lower() != ".png" or not _is_plot(path)):
        raise FewshotError(f"{option} {path} exists and is not a plot drawn by fewshot (an image of yours, or "
                           f"not a PNG); it would be overwritten: choose another path, e.g. {path.parent / example}")


def _is_plot(path):
    """Whether an existing PNG was drawn by matplotlib (so by `fewshot plot`), not an image of the user's."""
    try:
        with open(path, "rb") as f:
            return b"Software\0Matplotlib" in f.read(4096)
    except OSError:
        return False


def _regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _text(path, limit):
    """The text of a file of at most `limit` bytes (None when longer or unreadable); bytes
    that are not UTF-8 read as U+FFFD."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return None if len(data) > limit else data.decode("utf-8", "replace")


def is_scores(path: str | Path) -> bool:
    """Whether the file at `path` is `fewshot eval --scores` output: one number per line (or nothing)."""
    text = _text(path, 1 << 22)
    if text is None:
        return False
    try:
        [float(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return False
    return True


def is_predictions(path: str | Path) -> bool:
    """Whether the file at `path` is `fewshot predict --csv` output (or empty)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return not head.strip() or head.startswith(b"file,label,probability")
