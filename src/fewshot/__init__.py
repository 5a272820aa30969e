"""fewshot: few-shot learning by meta-learning."""
from .errors import FewshotError

__version__ = "0.1.0"
__all__ = ["FewshotError", "__version__"]
