"""Backbones, registered by name in BACKBONES and built from a config.

A backbone is one file that registers its class (`@BACKBONES.register("name")`, a
models.base.Backbone with `from_config(config)` and one `forward`), plus its module
name in the list below. Nothing here imports torch: the registry imports the modules
on its first lookup.
"""
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Backbone
    from ..config import Config

BACKBONES = Registry("model", modules=[f"fewshot.models.{name}" for name in ("conv4", "mlp", "resnet", "identity")])


def build(config: "Config") -> "Backbone":
    """The backbone `config.model` names, built from `config`."""
    return BACKBONES.get(config.model).from_config(config)
