"""Algorithms, one file each, registered by name and built from a config."""
from ..errors import FewshotError

ALGORITHMS = {}


def register(name):
    def wrap(cls):
        ALGORITHMS[name] = cls
        return cls
    return wrap


def build(config):
    from .. import models, tasks
    if config["algorithm"] not in ALGORITHMS:
        raise FewshotError(f"unknown algorithm {config['algorithm']!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[config["algorithm"]](models.build(config), config, tasks.family(config))


from . import anil, leo, maml, mamlpp, metasgd, protonet, reptile  # noqa: E402,F401  (registers)
