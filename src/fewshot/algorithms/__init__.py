"""Algorithms, one file each, registered by name in ALGORITHMS and built from a config.

Adding an algorithm is one file in this folder that registers its class
(`@ALGORITHMS.register("name")`, an algorithms.base.Algorithm), and a preset YAML.
Nothing here imports torch: the registry imports every module of the folder on its
first lookup.
"""
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Algorithm
    from ..config import Config

ALGORITHMS = Registry("algorithm", package="fewshot.algorithms")


def build(config: "Config") -> "Algorithm":
    """The algorithm `config.algorithm` names, with the backbone and task family of `config`."""
    from .. import models, tasks
    algorithm = ALGORITHMS.get(config.algorithm)
    return algorithm(models.build(config), config, tasks.family(config))
