"""Atomic file writes: a crash mid-write never leaves a broken file behind. And the
guard every output option goes through, so that no output lands on a run's or a
dataset's own files."""
import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import FewshotError

# the files a run folder is made of (train.py, embed.py): an output of another kind must never replace them
RUN_FILES = {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", ".lock", "pretrain.pt",
             "embed.json"}
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


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.
    The file gets the mode an ordinary open() would give it (0666 less the umask), not
    mkstemp's 0600. OS errors name `path`, never the temporary file."""
    path = Path(path)
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


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape")


def holds_run(folder):
    """Whether `folder` holds a training run or a pretraining (its own files would be at stake)."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_MARKERS)


def check_output(path, option, example, text=True):
    """Refuse an output path (`option` names it, `example` is a good file name) that is a
    folder, a run's own file, or a dataset's file; `text` outputs also refuse to replace
    an existing data file (a checkpoint, an image, an array)."""
    path = Path(path)
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
