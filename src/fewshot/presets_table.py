"""The README's table of presets, generated from the presets themselves (`fewshot presets
--markdown` prints it; tests/test_presets_table.py keeps README.md equal to it), so that a
preset added or changed cannot leave the table behind.

Every cell is read from a preset's config: its description (source and the paper's
number), the task, the network (the model and the keys only that model reads), the
meta-batch and length, and what adaptation does at meta-test in the words `fewshot eval`
prints (asked of the algorithm built from the preset).
"""
from .config import USER_KEYS, Config, declared_readers, eval_query, eval_ways, load_preset, preset_names

HEADER = ("| preset | what it is (source; the paper's number) | ways / shots / queries (train; test) | network "
          "| meta-batch x steps | adaptation at meta-test |\n| --- | --- | --- | --- | --- | --- |")


def network(config: Config) -> str:
    """The model and the values of the keys that only it reads (conv4's filters and downsampling,
    the MLP's layers), leaving out those that are off."""
    declared = declared_readers()["model"]  # each backbone's `reads`
    own = [name for name in USER_KEYS if declared.get(name) == (config.model,)]
    shown = [name if getattr(config, name) is True else f"{name} {getattr(config, name)}" for name in own
             if getattr(config, name) not in (None, False)]
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
