"""fewshot: few-shot learning by meta-learning."""
import os

# Before torch (and its OpenMP runtime) is loaded: idle OpenMP threads sleep instead of
# spinning. Spinning threads of two processes sharing cores slow both many times over
# (measured in docs/benchmarks.md, "Two runs on one machine"); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import FewshotError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Config", "FewshotError", "load", "load_preset", "__version__"]


def __getattr__(name):
    # torch is imported only when the Python API is used, so `fewshot --help` stays instant
    if name == "load":
        from .predict import load
        return load
    if name in ("Config", "load_preset"):  # the typed config: fewshot.load_preset("omniglot-5w1s").replace(steps=100)
        from . import config
        return getattr(config, name)
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
