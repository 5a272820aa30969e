"""Presets and their overrides.

A preset is a YAML file in `presets/` whose keys override DEFAULTS. Every key a
user may set is listed in DEFAULTS, so a typo is an error, not a silent no-op.
"""
import math
from importlib import resources
from pathlib import Path

import yaml

from .errors import FewshotError

DEFAULTS = {
    "description": "",
    # data
    "dataset": "omniglot",     # omniglot | folder | miniimagenet | embeddings | sinusoid
    "data": None,              # a prepared dataset folder, a raw copy, or a name under FEWSHOT_HOME
    "split": "maml",           # omniglot: maml | lake
    "image_size": 28,
    "channels": 1,
    "embedding_dim": 640,      # embeddings: the feature dimension the files must have (LEO's WRN-28-10: 640)
    "embedding_crop": "center",  # embeddings: center | multiview, the subfolder of --data to read (LEO's layout)
    "embedding_dataset": None,   # embeddings: miniImageNet | tieredImageNet, the subfolder of --data above the crop
    # tasks
    "ways": 5,
    "shots": 1,
    "query": 15,               # query images per class at meta-train
    "eval_query": None,        # query images per class at evaluation (None: same as query)
    # model
    "model": "conv4",
    "filters": 64,
    "widths": None,            # resnet12 | wrn28_10: channel widths (None: the papers', see models/resnet.py)
    "downsample": "maxpool",   # conv4: maxpool (4 x conv-BN-ReLU-pool) | stride (4 x strided conv-BN-ReLU)
    "batch_norm": "transductive",  # transductive (batch statistics always) | inductive (running statistics at test)
    "head": True,              # a linear output layer of `ways` units (False: features only, e.g. ProtoNets)
    "per_step_bn": False,      # conv4: batch-norm weights and statistics per inner step (MAML++)
    "in_features": 1,          # mlp: input size
    "hidden": [40, 40],        # mlp: hidden layer sizes
    "out_features": None,      # mlp: output size (None: ways)
    # algorithm
    "algorithm": "maml",
    "first_order": False,
    "batch_tasks": None,       # MAML family: all tasks of a meta-batch in one batched pass (None: always on CUDA;
                               # on the CPU by the rule measured in docs/benchmarks.md)
    "tasks_per_pass": None,    # batched: at most this many tasks per pass; a meta-batch that does not fit in memory
                               # runs in chunks with the same gradient (None: the whole meta-batch)
    "compile": False,          # capture the fixed-shape meta-step as a graph (torch.compile / CUDA graphs)
    "precision": "fp32",       # fp32 | tf32 (CUDA matmuls and convolutions in TF32) | bf16 (autocast to bfloat16)
    "inner_steps": 5,
    "inner_lr": 0.4,
    "eval_inner_steps": 10,
    "eval_inner_lr": None,     # None: same as inner_lr
    "eval_at_steps": None,     # also report the metric after these inner-step counts, e.g. [0, 1, 10]
    "eval_ways": None,         # ways at validation/test (None: same as ways; ProtoNets train with more)
    # algorithm-specific
    "msl_epochs": 0,           # MAML++: epochs of multi-step loss, annealed toward the last step
    "first_order_epochs": 0,   # MAML++: first-order gradients for this many epochs, then second order
    "steps_per_epoch": 500,    # MAML++: meta-steps per "epoch" for the two schedules above
    "inner_optimizer": "sgd",  # Reptile: sgd | adam
    "inner_batch": None,       # Reptile: inner mini-batch size (None: the whole task)
    "reptile_eval": "transductive",  # Reptile: transductive | non_transductive test-time batch norm
    "num_latents": 64,         # LEO: dimension of the latent code z (LEO defaults: deepmind/leo config.py)
    "inner_unroll_length": 5,  # LEO: latent-space adaptation steps at meta-train (meta-test: eval_inner_steps)
    "finetuning_unroll_length": 5,  # LEO: parameter-space fine-tuning steps after the latent steps
    "inner_lr_init": 1.0,      # LEO: initial value of the learned latent step sizes (one per latent unit)
    "finetuning_lr_init": 0.001,  # LEO: initial value of the learned fine-tuning step sizes (one per feature)
    "dropout_rate": 0.5,       # LEO: dropout on the embeddings at meta-train
    "kl_weight": 0.001,        # LEO: beta, weight of the KL term of the latent code
    "encoder_penalty_weight": 1e-9,  # LEO: gamma, weight of ||z' - z||^2 (encoder output vs adapted code)
    "l2_penalty_weight": 1e-8,  # LEO: lambda_1, weight of the L2 penalty on encoder, relation and decoder weights
    "orthogonality_penalty_weight": 0.001,  # LEO: lambda_2, weight of the decoder's orthogonality penalty
    # meta-optimization
    "meta_batch": 32,
    "meta_optimizer": "adam",  # adam | sgd (Reptile: sgd with meta_lr as its outer step size)
    "meta_lr": 0.001,
    "lr_schedule": "step",     # step (x lr_decay_gamma every lr_decay_every) | cosine | linear (to min_meta_lr)
    "min_meta_lr": 0.0,
    "lr_decay_every": 0,       # 0: constant meta learning rate
    "lr_decay_gamma": 0.5,
    "steps": 60000,
    "grad_clip_value": None,   # clip each meta-gradient entry to [-v, v] before the optimizer step (None: off)
    "grad_clip_norm": None,    # then clip each meta-gradient tensor's L2 norm to this, as LEO (None: off)
    # bookkeeping
    "threads": None,           # torch threads for training (None: torch's default, one per core)
    "seed": 0,
    "init": None,              # a checkpoint (run folder or .pt) whose weights start this run (transfer learning)
    "log_every": 50,
    "val_every": 500,
    "val_tasks": 100,
    "stop_at_val": None,       # stop once the validation metric reaches this (time-to-accuracy runs)
    "save_every": 500,
    "eval_tasks": 600,
    "eval_seed": 1234,
}


def preset_names():
    folder = resources.files("fewshot") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _check_keys(values, where):
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise FewshotError(
            f"unknown config key {unknown[0]!r} in {where}; known keys: {', '.join(sorted(DEFAULTS))}")


def load_preset(name):
    """Return DEFAULTS updated by preset `name` (a preset name or a path to a YAML file)."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) and path.is_file():
        text, where = path.read_text(), str(path)
    else:
        resource = resources.files("fewshot") / "presets" / f"{name}.yaml"
        if not resource.is_file():
            raise FewshotError(
                f"unknown preset {name!r}; choose one of: {', '.join(preset_names())} (or a .yaml file)")
        text, where = resource.read_text(), f"preset {name}"
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise FewshotError(f"{where} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise FewshotError(f"{where} must be a mapping of keys to values")
    _check_keys(values, where)
    config = dict(DEFAULTS)
    config.update(values)
    config["preset"] = name
    return config


def parse_overrides(pairs):
    """`["steps=600", "inner_lr=0.1"]` -> {"steps": 600, "inner_lr": 0.1}. Values are YAML
    (plain scalars and lists only: tags and unparsable text are refused)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FewshotError(f"--set takes KEY=VALUE, got {pair!r}")
        key = key.strip()
        if value.strip().startswith("!"):
            raise FewshotError(f"--set {key}={value}: YAML tags are not accepted; give a plain value")
        try:
            overrides[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as error:
            reason = " ".join(str(error).split())[:100]
            raise FewshotError(f"--set {key}={value} is not a value YAML can read ({reason}); give a number, "
                               f"a word, true/false, null or a list like [1, 2]") from None
    _check_keys(overrides, "--set")
    return overrides


def apply_overrides(config, overrides):
    config = dict(config)
    config.update(overrides)
    validate(config)
    return config


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


# key -> (kind, minimum); kinds: int, number (finite int or float), with "?" allowing null
INTEGERS = {
    "ways": 1, "shots": 1, "query": 1, "meta_batch": 1, "steps": 1, "inner_steps": 0, "eval_inner_steps": 0,
    "filters": 1, "image_size": 1, "embedding_dim": 1, "in_features": 1, "num_latents": 1,
    "inner_unroll_length": 0, "finetuning_unroll_length": 0, "msl_epochs": 0, "first_order_epochs": 0,
    "steps_per_epoch": 1, "lr_decay_every": 0, "seed": 0, "log_every": 1, "val_every": 1, "val_tasks": 1,
    "save_every": 1, "eval_tasks": 1, "eval_seed": 0,
}
OPTIONAL_INTEGERS = {"eval_query": 1, "eval_ways": 1, "tasks_per_pass": 1, "inner_batch": 1, "out_features": 1,
                     "threads": 1}
# key -> (minimum, strict): the value must be finite and >= minimum (> when strict)
NUMBERS = {
    "inner_lr": (0, False), "meta_lr": (0, False), "min_meta_lr": (0, False), "lr_decay_gamma": (0, True),
    "inner_lr_init": (None, False), "finetuning_lr_init": (None, False), "dropout_rate": (0, False),
    "kl_weight": (0, False), "encoder_penalty_weight": (0, False), "l2_penalty_weight": (0, False),
    "orthogonality_penalty_weight": (0, False),
}
OPTIONAL_NUMBERS = {"eval_inner_lr": (0, False), "grad_clip_value": (0, True), "grad_clip_norm": (0, True),
                    "stop_at_val": (None, False)}
CHOICES = {
    "dataset": ("omniglot", "folder", "miniimagenet", "embeddings", "sinusoid"),
    "downsample": ("maxpool", "stride"),
    "batch_norm": ("transductive", "inductive"),
    "meta_optimizer": ("adam", "sgd"),
    "lr_schedule": ("step", "cosine", "linear"),
    "inner_optimizer": ("sgd", "adam"),
    "reptile_eval": ("transductive", "non_transductive"),
    "precision": ("fp32", "tf32", "bf16"),
    "embedding_crop": ("center", "multiview"),
}
TEXTS = ("description", "split", "model", "algorithm")
OPTIONAL_TEXTS = ("data", "init", "embedding_dataset")


def validate(config):
    """Reject settings of the wrong type or out of range (finite numbers only), and those
    that cannot form a task, before any work starts and before any folder exists."""
    for key, minimum in INTEGERS.items():
        value = config[key]
        if not _is_int(value) or value < minimum:
            raise FewshotError(f"{key} must be a whole number >= {minimum}, got {value!r}; "
                               f"e.g. --set {key}={max(minimum, 1)}")
    for key, minimum in OPTIONAL_INTEGERS.items():
        value = config[key]
        if value is not None and (not _is_int(value) or value < minimum):
            raise FewshotError(f"{key} must be a whole number >= {minimum} or null, got {value!r}")
    for table, optional in ((NUMBERS, False), (OPTIONAL_NUMBERS, True)):
        for key, (minimum, strict) in table.items():
            value = config[key]
            if optional and value is None:
                continue
            low = minimum is not None and (value <= minimum if strict else value < minimum) \
                if _is_number(value) else False
            if not _is_number(value) or low:
                bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
                raise FewshotError(f"{key} must be a finite number{bound}{' or null' if optional else ''}, "
                                   f"got {value!r}; e.g. --set {key}={DEFAULTS[key] if DEFAULTS[key] is not None else 1}")
    if config["dropout_rate"] >= 1:
        raise FewshotError(f"dropout_rate must be below 1, got {config['dropout_rate']!r}")
    if config["channels"] not in (1, 3) or isinstance(config["channels"], bool):
        raise FewshotError(f"channels must be 1 (gray) or 3 (colour), got {config['channels']!r}")
    for key in TEXTS:
        if not isinstance(config[key], str):
            raise FewshotError(f"{key} must be text, got {config[key]!r}; quote it: --set {key}='\"...\"'")
    for key in OPTIONAL_TEXTS:
        if config[key] is not None and not isinstance(config[key], str):
            raise FewshotError(f"{key} must be a path or name (text), got {config[key]!r}; quote it")
    if config["ways"] < 2 and config["dataset"] != "sinusoid":  # regression has no classes
        raise FewshotError(f"ways must be at least 2 for classification, got {config['ways']}")
    for key in ("compile", "first_order", "head", "per_step_bn"):
        if not isinstance(config[key], bool):
            raise FewshotError(f"{key} must be true or false, got {config[key]!r}")
    if config["batch_tasks"] is not None and not isinstance(config["batch_tasks"], bool):
        raise FewshotError(f"batch_tasks must be true, false or null, got {config['batch_tasks']!r}")
    widths = config["widths"]
    if widths is not None and (not isinstance(widths, list) or not widths or
                               not all(_is_int(w) and w > 0 for w in widths)):
        raise FewshotError(f"widths must be a list of positive integers, e.g. [64, 160, 320, 640], got {widths!r}")
    hidden = config["hidden"]
    if not isinstance(hidden, list) or not all(_is_int(h) and h > 0 for h in hidden):
        raise FewshotError(f"hidden must be a list of positive integers, e.g. [40, 40], got {hidden!r}")
    at_steps = config["eval_at_steps"]
    if at_steps is not None and (not isinstance(at_steps, list) or not all(_is_int(s) and s >= 0 for s in at_steps)):
        raise FewshotError(f"eval_at_steps must be a list of whole numbers >= 0, e.g. [0, 1, 10], got {at_steps!r}")
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise FewshotError(f"{key} must be one of {', '.join(choices)}, got {config[key]!r}")
    if config["algorithm"] == "mamlpp" and config["eval_inner_steps"] > config["inner_steps"]:
        raise FewshotError(f"MAML++ learns a rate and batch-norm weights per inner step, so eval_inner_steps "
                           f"({config['eval_inner_steps']}) > inner_steps ({config['inner_steps']}) would adapt "
                           f"with untrained ones; set eval_inner_steps <= inner_steps "
                           f"(--set eval_inner_steps={config['inner_steps']})")


def complete(config):
    """A config saved by an older fewshot, with the keys added since at their defaults."""
    return {**DEFAULTS, **config}


def eval_query(config):
    return config["eval_query"] or config["query"]


def eval_ways(config):
    return config["eval_ways"] or config["ways"]


def eval_inner_lr(config):
    return config["eval_inner_lr"] if config["eval_inner_lr"] is not None else config["inner_lr"]


def dump(config):
    return yaml.safe_dump(config, sort_keys=False)
