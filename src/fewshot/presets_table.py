"""The README's table of presets, generated from the presets themselves (`fewshot presets
--markdown` prints it; tests/test_presets_table.py keeps README.md equal to it), so that a
preset added or changed cannot leave the table behind.

Every cell is read from a preset's config: its description (source and the paper's
number), the task, the network (the model and the keys only that model reads), the
meta-batch and length, and what adaptation does at meta-test in the words `fewshot eval`
prints (asked of the algorithm built from the preset).
"""
from .config import DEFAULTS, USER_KEYS, Config, declared_readers, eval_query, eval_ways, load_preset, preset_names

HEADER = ("| preset | what it is (source; the paper's number) | ways / shots / queries (train; test) | network "
          "| meta-batch x steps | adaptation at meta-test |\n| --- | --- | --- | --- | --- | --- |")


# the keys that say how big a network is: shown even at their defaults
SHAPE_KEYS = ("filters", "downsample", "in_features", "hidden", "out_features")


def network(config: Config) -> str:
    """The model and the keys it reads: its shape (conv4's filters and downsampling,
    the MLP's layers) and any other key away from its default (a switch turned off reads
    "no KEY")."""
    declared = declared_readers()["model"]  # each backbone's `reads`
    shown = []
    for name in USER_KEYS:
        value = getattr(config, name)
        if config.model not in declared.get(name, ()) or value is None:
            continue
        if name in SHAPE_KEYS or value != DEFAULTS[name]:
            shown.append(name if value is True else f"no {name}" if value is False else f"{name} {value}")
    if config.dataset == "embeddings":
        shown.append(f"on {config.embedding_dim}-d embeddings")
    return f"{config.model}" + (f" ({', '.join(shown)})" if shown else "")


def task(config: Config) -> str:
    train = f"{config.ways} / {config.shots} / {config.query}"
    test = f"{eval_ways(config)} / {config.shots} / {eval_query(config)}"
    return train if test == train else f"{train}; {test}"


def row(name: str) -> str:
    from . import algorithms
    config = load_preset(name)
    adaptation = algorithms.build(config).describe_adaptation(config.eval_inner_steps)
    cells = [f"`{name}`", config.description, task(config), network(config),
             f"{config.meta_batch} x {config.steps:,}", adaptation]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown() -> str:
    """The table, one row per preset, in name order."""
    return "\n".join([HEADER, *(row(name) for name in preset_names())])


__all__ = ["markdown", "network", "task"]
