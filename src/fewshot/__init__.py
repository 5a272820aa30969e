"""fewshot: few-shot learning by meta-learning."""
from .errors import FewshotError
from .predict import load

__version__ = "0.1.0"
__all__ = ["FewshotError", "load", "__version__"]
