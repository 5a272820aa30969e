"""Backbones, registered by name and built from a config."""
from ..errors import FewshotError

MODELS = {}


def register(name):
    def wrap(cls):
        MODELS[name] = cls
        return cls
    return wrap


def build(config):
    if config["model"] not in MODELS:
        raise FewshotError(f"unknown model {config['model']!r}; choose one of {', '.join(MODELS)}")
    return MODELS[config["model"]].from_config(config)


from . import conv4, mlp, resnet  # noqa: E402,F401  (registers)
