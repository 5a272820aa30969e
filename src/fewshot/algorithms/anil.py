"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner
loop adapts the head only; the body is learned by the outer loop alone."""
from . import register
from .maml import MAML


@register("anil")
class ANIL(MAML):
    def adapts(self, name):
        return name.startswith("head.")
