"""Checkpoints: one torch file holding config, weights, optimizer, schedule and
step, written atomically and checked on load."""
from pathlib import Path

import torch

from .config import complete
from .errors import FewshotError
from .io import atomic_path

FORMAT = "fewshot-checkpoint"
VERSION = 1


def save(path, **state):
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)


def find(target):
    """A checkpoint file, or a run folder's best.pt (else last.pt)."""
    target = Path(target)
    if target.is_dir():
        for name in ("best.pt", "last.pt"):
            if (target / name).is_file():
                return target / name
        raise FewshotError(f"{target} holds no checkpoint (best.pt or last.pt); train into it first "
                           f"with `fewshot train PRESET --out {target}`")
    if not target.is_file():
        raise FewshotError(f"checkpoint {target} does not exist; give a run folder or a .pt file")
    return target


def load(target):
    path = find(target)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise FewshotError(f"{path} is truncated or not a checkpoint ({reason}); use the run's other "
                           f"checkpoint (last.pt or best.pt) or train again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FewshotError(f"{path} is not a fewshot checkpoint (a foreign or raw state dict?); give a "
                           f"best.pt or last.pt written by `fewshot train`")
    if isinstance(state.get("config"), dict):
        state["config"] = complete(state["config"])
    if state.get("version", 0) > VERSION:
        raise FewshotError(f"{path} was written by a newer fewshot (format {state['version']}); upgrade fewshot")
    return state
