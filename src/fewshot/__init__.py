"""fewshot: few-shot learning by meta-learning."""
from .errors import FewshotError

__version__ = "0.1.0"
__all__ = ["FewshotError", "load", "__version__"]


def __getattr__(name):
    # torch is imported only when the Python API is used, so `fewshot --help` stays instant
    if name == "load":
        from .predict import load
        return load
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
