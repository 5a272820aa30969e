"""Checkpoints: one torch file holding config, weights, optimizer, schedule and
step, written atomically and checked on load."""
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .config import Config, complete, validate
from .errors import FewshotError
from .files import atomic_path
from .reading import reason

FORMAT = "fewshot-checkpoint"
VERSION = 1


def save(path: str | Path, **state: Any) -> None:
    """Write atomically: on any failure the previous file at `path` is left as it was. A
    Config is written as its plain mapping: torch.load(weights_only=True) refuses classes."""
    state = {name: value.to_dict() if isinstance(value, Config) else value for name, value in state.items()}
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    except RuntimeError as error:  # torch's writer reports a full disk as a RuntimeError, not an OSError
        reason = " ".join(str(error).split())[-100:]
        raise FewshotError(f"cannot write checkpoint {path} ({reason}); the disk may be full: free some space "
                           f"and resume; the previous {Path(path).name}, if any, is unchanged") from None


def refused_reason(error: BaseException) -> str:
    """Why torch refused a file, in words that never suggest loading it unsafely."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds a Python object{what} that a checkpoint never contains, and was refused unread, "
                f"since loading it could run code")
    return " ".join(text.split())[:120] if text.strip() else type(error).__name__


def find(target: str | Path) -> Path:
    """A checkpoint file, a run folder's best.pt (else last.pt), or the weights of the
    shipped model of that name (`fewshot models`), checked against its card's sha256; a
    file or folder of that name comes first."""
    target = Path(target)
    if not target.exists():
        from . import zoo
        shipped = zoo.weights_file(str(target))
        if shipped is not None:
            return shipped
    if target.is_dir():
        for name in ("best.pt", "last.pt"):
            if (target / name).is_file():
                return target / name
        raise FewshotError(f"{target} holds no checkpoint (best.pt or last.pt); train into it first "
                           f"with `fewshot train PRESET --out {target}`")
    if not target.is_file():
        raise FewshotError(f"checkpoint {target} does not exist; give a run folder, a .pt file or the name of "
                           f"a shipped model (`fewshot models`)")
    return target


def load(target: str | Path, run: bool = False) -> dict[str, Any]:
    """The checked state of a checkpoint (a file, or a run folder's best.pt / last.pt): a
    run's config goes through the checks a preset does. `run`: refuse `fewshot embed`'s
    pretrain.pt (a backbone, no meta-trained algorithm), as what evaluates or adapts must."""
    path = find(target)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except IsADirectoryError:
        raise FewshotError(f"{path} is a folder, not a checkpoint; give a run folder or a .pt file") from None
    except PermissionError as error:
        raise FewshotError(f"cannot read {path} ({error.strerror}); fix its permissions") from None
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise FewshotError(f"{path} is truncated or not a checkpoint ({refused_reason(error)}); use the run's "
                               f"other checkpoint (last.pt or best.pt) or train again") from None
        raise FewshotError(f"{path} was refused: {refused_reason(error)}; give a best.pt or last.pt written by "
                           f"`fewshot train`") from None
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise FewshotError(f"{path} is truncated or not a checkpoint ({refused_reason(error)}); use the run's "
                           f"other checkpoint (last.pt or best.pt) or train again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FewshotError(f"{path} is not a fewshot checkpoint (a foreign or raw state dict?); give a "
                           f"best.pt or last.pt written by `fewshot train`")
    version = state.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise FewshotError(f"{path} was written by a newer fewshot (format {version!r}); upgrade fewshot")
    pretraining = "algorithm" not in state and "options" in state
    if pretraining and run:
        raise FewshotError(f"{path} is `fewshot embed`'s pretraining (a backbone for LEO's embedding files), not a "
                           f"meta-trained run; give a run folder or its best.pt or last.pt (`fewshot train`), e.g. "
                           f"of LEO trained on the embeddings it wrote")
    weights = state.get("algorithm", state.get("model"))
    if not isinstance(state.get("config"), dict) or not isinstance(weights, dict) or \
            not isinstance(state.get("step"), int):
        raise FewshotError(f"{path} is a damaged fewshot checkpoint (its config, weights or step is missing); "
                           f"use the run's other checkpoint (last.pt or best.pt) or train again")
    try:
        config = complete(state["config"])
        state["config"] = config if pretraining else validate(config)
    except (FewshotError, TypeError) as error:
        raise FewshotError(f"{path} is a damaged fewshot checkpoint (its config: {reason(error)}); use the run's "
                           f"other checkpoint (last.pt or best.pt) or train again") from None
    return state
