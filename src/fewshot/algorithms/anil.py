"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner
loop adapts the head only; the body is learned by the outer loop alone."""
from . import ALGORITHMS
from .maml import MAML


@ALGORITHMS.register("anil")
class ANIL(MAML):
    def adapts(self, name):
        return self.parameter_roles[name] == "head"
