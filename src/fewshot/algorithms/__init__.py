"""Algorithms, one file each, registered by name in ALGORITHMS and built from a config.

Adding an algorithm is one file that registers its class (`@ALGORITHMS.register("name")`,
an algorithms.base.Algorithm), its module name in the list below, and a preset YAML.
Nothing here imports torch: the registry imports the modules on its first lookup.
"""
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Algorithm
    from ..config import Config

ALGORITHMS = Registry("algorithm", modules=[f"fewshot.algorithms.{name}" for name in
                                            ("maml", "anil", "metasgd", "mamlpp", "reptile", "protonet", "leo")])


def build(config: "Config") -> "Algorithm":
    """The algorithm `config.algorithm` names, with the backbone and task family of `config`."""
    from .. import models, tasks
    algorithm = ALGORITHMS.get(config.algorithm)
    return algorithm(models.build(config), config, tasks.family(config))
