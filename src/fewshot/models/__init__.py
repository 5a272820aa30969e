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
    return MODELS[config["model"]](in_channels=config["channels"], ways=config["ways"],
                                   filters=config["filters"], downsample=config["downsample"],
                                   image_size=config["image_size"], batch_norm=config["batch_norm"])


from . import conv4  # noqa: E402,F401  (registers)
