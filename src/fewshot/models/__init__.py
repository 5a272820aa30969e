"""Backbones, registered by name in BACKBONES and built from a config.

A backbone is one file in this folder that registers its class
(`@BACKBONES.register("name")`, a models.base.Backbone with `from_config(config)` and
one `forward`). Nothing here imports torch: the registry imports every module of the
folder on its first lookup.
"""
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Backbone
    from ..config import Config

BACKBONES = Registry("model", package="fewshot.models")


def build(config: "Config") -> "Backbone":
    """The backbone `config.model` names, built from `config`."""
    return BACKBONES.get(config.model).from_config(config)
