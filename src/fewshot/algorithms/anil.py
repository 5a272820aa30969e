"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner
loop adapts the head only; the body is learned by the outer loop alone."""
from . import ALGORITHMS
from .maml import MAML


@ALGORITHMS.register("anil")
class ANIL(MAML):
    reads = MAML.reads - {"adapt_bn"}  # batch norm is never adapted: it is not the head

    def adapts(self, name: str) -> bool:
        return self.parameter_roles[name] == "head"
