"""The config: one typed schema, the presets, and their overrides.

`Config` is the schema: every key a user may set, with its type, its range or
choices, its default, a one-line meaning, and the algorithms, models or datasets
that read it. DEFAULTS, the checks of `validate()` and `fewshot presets --keys`
are all generated from it, so a key cannot be added without its type and a typo
is an error, not a silent no-op. A preset is a YAML file in `presets/` whose keys
override the defaults.

Keys read by the algorithm, the model or the dataset (`read_by`: inner_steps,
MAML++'s schedules, Reptile's inner optimizer, LEO's weights, per_step_bn, widths,
...) are refused at a non-default value under any algorithm, model or dataset that
does not read them: they would be silently ignored there. Which ones read a key is
declared by each of them, never listed here: an algorithm's or backbone's class
(and a dataset kind) names the keys it reads in `reads`, e.g.
`reads = frozenset({"inner_steps", "inner_lr"})`, and subclasses extend their
parent's (`MAML.reads | {...}`). Keys read by the trainer under one learning-rate
schedule only (`when`) are refused under the others the same way.
"""
import difflib
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import FewshotError
from .reading import YAMLProblem, brief, load_yaml, parse_yaml, read_yaml



def key(default: Any, meaning: str, *, low: float | None = None, above: float | None = None,
        below: float | None = None, must: str | None = None, nonempty: bool = False, example: str = "",
        read_by: tuple = (), when: tuple | None = None, readers: tuple = (), refuse_ignored: bool = True,
        user: bool = True) -> Any:
    """One config key. `low`/`above`/`below`: value >= low, > above, < below. `read_by`: the
    kinds ("algorithm", "model", "dataset") whose chosen one reads it, if it declares the key
    in its `reads`; under one that does not, a value other than the default would be ignored
    and is refused (unless `refuse_ignored` is False). `when`: (key, values): read only while
    that key has one of these values, refused otherwise. `readers`: who else reads it, for
    `fewshot presets --keys`. `must`: the phrase of a refusal when the generated one would
    not say it well; `example`: a good value, for a list's refusal. `user`: settable from a
    preset or --set."""
    spec = dict(meaning=meaning, low=low, above=above, below=below, must=must, nonempty=nonempty,
                example=example, read_by=read_by, when=when, readers=readers, refuse_ignored=refuse_ignored,
                user=user)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=spec)
    return field(default=default, metadata=spec)


@dataclass(slots=True)
class Config:
    """Every setting of a run, read as attributes (`config.inner_lr`). `validate()` checks one;
    `replace()` makes a checked copy with changes; `to_dict()` is the plain mapping that YAML
    and checkpoints hold. Slots: setting a misspelt attribute is an error, not a new key."""
    description: str = key("", "what the preset is, with its source and paper accuracy", readers=("presets",))
    # data
    dataset: str = key("omniglot", "the kind of data: omniglot | miniimagenet | folder | embeddings | sinusoid "
                       "(data.DATASETS)", readers=("data",))
    data: str | None = key(None, "a prepared dataset folder, a raw copy, or a name under FEWSHOT_HOME",
                           readers=("data",))
    split: str = key("maml", "the class split: omniglot maml | lake (validation: Lake's 20-way runs within "
                     "held-out background alphabets); a folder's own train/val/test", readers=("data",))
    episodes_within_alphabet: bool = key(False, "meta-train tasks drawn from one alphabet each (a turned "
                                         "alphabet counts as one)", read_by=("dataset",))
    affine_distortion: bool = key(False, "each meta-train image distorted by its own random affine map, as Koch "
                                  "et al. 2015 (rotation +-10 deg, shears +-0.3, scales 0.8-1.2, shifts +-2/105 of "
                                  "the side, each part with probability 1/2)", read_by=("dataset",))
    eval_shift: int = key(0, "test-time augmentation at validation and test: each image also shifted by up to N "
                          "pixels each way ((2N+1)^2 copies), the support set grown by the copies and each query's "
                          "outputs averaged over its own (0: off)", low=0, read_by=("dataset",),
                          readers=("evaluator",))
    image_size: int = key(28, "image side in pixels the network sees", low=1, readers=("data", "models"))
    channels: Literal[1, 3] = key(1, "1 (gray) or 3 (colour)", must="1 (gray) or 3 (colour)",
                                  readers=("data", "models"))
    embedding_dim: int = key(640, "the feature dimension the embedding files must have (LEO's WRN-28-10: 640)",
                             low=1, read_by=("dataset",), readers=("leo",))
    embedding_crop: Literal["center", "multiview"] = key(
        "center", "the subfolder of --data to read (LEO's layout)", read_by=("dataset",))
    embedding_dataset: str | None = key(None, "miniImageNet | tieredImageNet: the subfolder of --data above the crop",
                                        read_by=("dataset",))
    image_preset: str | None = key(None, "the image preset whose backbone `fewshot embed` pretrains to make these "
                                   "embeddings (`fewshot embed LEO-PRESET` uses it)", read_by=("dataset",),
                                   readers=("embed",))
    # tasks
    ways: int = key(5, "classes per task at meta-train (sinusoid: 1)", low=1, readers=("all",))
    shots: int = key(1, "labelled examples per class in a task's support set", low=1, readers=("all",))
    query: int = key(15, "query examples per class at meta-train", low=1, readers=("all",))
    eval_query: int | None = key(None, "query examples per class at evaluation (null: query)", low=1,
                                 readers=("evaluator",))
    # model
    model: str = key("conv4", "the backbone: conv4 | resnet12 | wrn28_10 | mlp | none (LEO)", readers=("models",))
    filters: int = key(64, "conv4's channels per layer", low=1, read_by=("model",), refuse_ignored=False)
    widths: list[int] | None = key(None, "channel widths of the four stages (null: the papers')", low=1,
                                   nonempty=True, example="[64, 160, 320, 640]", read_by=("model",))
    downsample: Literal["maxpool", "stride"] = key(
        "maxpool", "maxpool (4 x conv-BN-ReLU-pool) | stride (4 x strided conv-BN-ReLU)", read_by=("model",),
        refuse_ignored=False)
    batch_norm: Literal["transductive", "inductive"] = key(
        "transductive", "batch statistics always | running statistics at test", read_by=("model",))
    head: bool = key(True, "a linear output layer of `ways` units (false: features only, e.g. ProtoNets)",
                     read_by=("model",))
    per_step_bn: bool = key(False, "batch-norm weights and statistics per inner step (MAML++)", read_by=("model",))
    leaky_relu: bool = key(False, "conv4: a leaky ReLU (negative slope 0.01) for the ReLU, as MAML++'s authors' "
                           "network", read_by=("model",))
    # cbfinn/maml's network (tf.contrib.layers.batch_norm's defaults, TensorFlow's 'SAME' padding, its
    # Omniglot output layer; docs/faithfulness.md, "MAML"): conv4's, not refused under other models for
    # the reason given below for the shape keys (MAML's presets carry them)
    bn_scale: bool = key(True, "conv4's batch norm learns a scale (false: a shift only, no scale parameter; "
                               "tf.contrib.layers.batch_norm's default, as cbfinn/maml)", read_by=("model",),
                         refuse_ignored=False)
    bn_eps: float = key(1e-5, "conv4's batch-norm epsilon, added to the variance (torch: 1e-5; TensorFlow and "
                              "cbfinn/maml: 0.001)", above=0, read_by=("model",), refuse_ignored=False)
    conv_padding: Literal["symmetric", "tf_same"] = key(
        "symmetric", "conv4's 3x3 padding: symmetric (1 pixel each side) | tf_same (TensorFlow's 'SAME': "
        "with stride 2 the odd pixel goes at the bottom and right only, as cbfinn/maml)", read_by=("model",),
        refuse_ignored=False)
    head_init: Literal["xavier", "normal"] = key(
        "xavier", "conv4's output layer's initial weights: xavier (Glorot uniform) | normal (standard normal, "
        "cbfinn/maml's Omniglot network)", read_by=("model",), refuse_ignored=False)
    # the shape keys of conv4 and the MLP are not refused under other models: presets carry them, and
    # `--set model=resnet12` on any preset is a documented use (tests/test_config.py sets hidden on conv4)
    in_features: int = key(1, "input size", low=1, read_by=("model",), refuse_ignored=False)
    hidden: list[int] = key([40, 40], "hidden layer sizes", low=1, example="[40, 40]", read_by=("model",),
                            refuse_ignored=False)
    out_features: int | None = key(None, "output size (null: ways)", low=1, read_by=("model",), refuse_ignored=False)
    # algorithm
    algorithm: str = key("maml", "maml | anil | metasgd | mamlpp | reptile | protonet | leo", readers=("all",))
    first_order: bool = key(False, "first-order gradients (FOMAML)", read_by=("algorithm",))
    batch_tasks: bool | None = key(None, "all tasks of a meta-batch in one batched pass (null: always on CUDA, "
                                         "on the CPU where measured faster)", read_by=("algorithm",))
    tasks_per_pass: int | None = key(None, "batched: at most this many tasks per pass, same gradient "
                                           "(null: the whole meta-batch)", low=1, read_by=("algorithm",))
    loss_reduction: Literal["mean", "sum_div_shots"] = key(
        "mean", "a task's loss in the inner loop and the meta-objective: mean of the per-example losses | "
        "sum_div_shots: their sum / shots, shots the support set's examples per class (cbfinn/maml's xent; "
        "the support loss is then ways x the mean)", read_by=("algorithm",))
    adapt_bn: bool = key(True, "the inner loop adapts batch norm's parameters (false: only the outer loop learns "
                               "them, as in cbfinn/maml, where they are no fast weights; ANIL and MAML++ never "
                               "adapt them)", read_by=("algorithm",))
    compile: bool = key(False, "capture the fixed-shape meta-step as a graph (MAML, FOMAML, ANIL; "
                               "others run eager with a notice)", readers=("trainer",))
    precision: Literal["fp32", "tf32", "bf16"] = key(
        "fp32", "tf32: CUDA matmuls and convolutions in TF32; bf16: autocast to bfloat16", readers=("trainer",))
    inner_steps: int = key(5, "inner gradient steps at meta-train", low=0, read_by=("algorithm",))
    inner_lr: float = key(0.4, "inner step size at meta-train (Meta-SGD, MAML++: its initial value)", low=0,
                          read_by=("algorithm",))
    eval_inner_steps: int = key(10, "inner steps at meta-test", low=0, read_by=("algorithm",))
    eval_inner_lr: float | None = key(None, "inner step size at meta-test (null: inner_lr)", low=0,
                                      read_by=("algorithm",))
    eval_at_steps: list[int] | None = key(None, "also report the metric after these inner-step counts, "
                                                "e.g. [0, 1, 10]", low=0, example="[0, 1, 10]",
                                          read_by=("algorithm",), readers=("evaluator",))
    eval_ways: int | None = key(None, "ways at validation and test (null: ways; ProtoNets train with more)", low=1,
                                readers=("evaluator",))
    # algorithm-specific
    msl_epochs: int = key(0, "epochs of multi-step loss, annealed toward the last step", low=0,
                          read_by=("algorithm",))
    first_order_epochs: int = key(0, "first-order gradients for this many epochs, then second order", low=0,
                                  read_by=("algorithm",))
    steps_per_epoch: int = key(500, "meta-steps per epoch of the two schedules above", low=1,
                               read_by=("algorithm",))
    inner_optimizer: Literal["sgd", "adam"] = key("sgd", "the inner loop's optimizer", read_by=("algorithm",))
    inner_batch: int | None = key(None, "inner mini-batch size (null: the whole task)", low=1,
                                  read_by=("algorithm",))
    eval_inner_batch: int | None = key(None, "inner mini-batch size at meta-test (null: inner_batch; the "
                                             "reference's --eval-batch)", low=1, read_by=("algorithm",))
    reptile_eval: Literal["transductive", "non_transductive"] = key(
        "transductive", "test-time batch norm over all queries | one query at a time", read_by=("algorithm",))
    num_latents: int = key(64, "dimension of the latent code z", low=1, read_by=("algorithm",))
    inner_unroll_length: int = key(5, "latent-space adaptation steps at meta-train (test: eval_inner_steps)",
                                   low=0, read_by=("algorithm",))
    finetuning_unroll_length: int = key(5, "parameter-space fine-tuning steps after the latent steps", low=0,
                                        read_by=("algorithm",))
    inner_lr_init: float = key(1.0, "initial value of the learned latent step sizes", read_by=("algorithm",))
    finetuning_lr_init: float = key(0.001, "initial value of the learned fine-tuning step sizes",
                                    read_by=("algorithm",))
    dropout_rate: float = key(0.5, "dropout on the embeddings at meta-train", low=0, below=1, read_by=("algorithm",))
    kl_weight: float = key(0.001, "beta, weight of the latent code's KL term", low=0, read_by=("algorithm",))
    encoder_penalty_weight: float = key(1e-9, "gamma, weight of ||z' - z||^2", low=0, read_by=("algorithm",))
    l2_penalty_weight: float = key(1e-8, "lambda_1, L2 penalty on encoder, relation and decoder weights", low=0,
                                   read_by=("algorithm",))
    orthogonality_penalty_weight: float = key(0.001, "lambda_2, the decoder's orthogonality penalty", low=0,
                                              read_by=("algorithm",))
    # meta-optimization
    meta_batch: int = key(32, "tasks per meta-step", low=1, readers=("trainer",))
    meta_optimizer: Literal["adam", "sgd"] = key("adam", "the outer optimizer (Reptile: sgd, meta_lr its step)",
                                                 readers=("trainer",))
    meta_lr: float = key(0.001, "the outer learning rate", low=0, readers=("trainer",))
    lr_schedule: Literal["step", "cosine", "linear"] = key(
        "step", "step (x lr_decay_gamma every lr_decay_every) | cosine | linear (to min_meta_lr)",
        readers=("trainer",))
    min_meta_lr: float = key(0.0, "where cosine and linear schedules end", low=0, readers=("trainer",),
                              when=("lr_schedule", ("cosine", "linear")))
    lr_decay_every: int = key(0, "step schedule: decay every this many steps (0: constant)", low=0,
                              readers=("trainer",), when=("lr_schedule", ("step",)))
    lr_decay_gamma: float = key(0.5, "step schedule: the decay factor", above=0, readers=("trainer",),
                                  when=("lr_schedule", ("step",)))
    steps: int = key(60000, "meta-steps to train", low=1, readers=("trainer",))
    grad_clip_value: float | None = key(None, "clip each meta-gradient entry to [-v, v] (null: off)", above=0,
                                        readers=("trainer",))
    grad_clip_norm: float | None = key(None, "then clip each meta-gradient tensor's L2 norm, as LEO (null: off)",
                                       above=0, readers=("trainer",))
    # bookkeeping
    threads: int | None = key(None, "torch threads for training (null: one per core)", low=1, readers=("trainer",))
    seed: int = key(0, "seed of the run: tasks, weights, dropout", low=0, readers=("all",))
    init: str | None = key(None, "a checkpoint (run folder or .pt) whose weights start this run", readers=("trainer",))
    log_every: int = key(50, "steps between log lines and metrics rows", low=1, readers=("trainer",))
    val_every: int = key(500, "steps between validations", low=1, readers=("trainer",))
    val_tasks: int = key(100, "tasks per validation", low=1, readers=("trainer",))
    stop_at_val: float | None = key(None, "stop once the validation metric reaches this (null: never)",
                                    readers=("trainer",))
    save_every: int = key(500, "steps between checkpoints", low=1, readers=("trainer",))
    eval_tasks: int = key(600, "test tasks of `fewshot eval`", low=1, readers=("evaluator",))
    eval_seed: int = key(1234, "seed of the fixed validation and test tasks", low=0, readers=("evaluator",))
    # set by fewshot, not by users: the preset a run came from
    preset: str | None = key(None, "the preset this config came from", user=False)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes`, checked."""
        return validate({**self.to_dict(), **changes})

    def unchecked_replace(self, **changes: Any) -> "Config":
        """A copy with `changes`, not checked: for internal configs that no user wrote
        (e.g. `fewshot embed`'s pretraining network), whose combinations validate() would
        refuse as a user's mistake."""
        return replace(self, **changes)  # dataclasses.replace


# Upper bounds: every whole number has one the machine can hold, so that a size is refused here, before
# anything is allocated or written, not by a MemoryError or an overflow later. Sizes get bounds far above
# any paper's (and `fewshot data --size`'s 1024 for image_size); the rest fit a 64-bit integer.
WHOLE_MAX = 2 ** 63 - 1
HIGH = {"image_size": 1024, "embedding_dim": 65536, "ways": 100_000, "eval_ways": 100_000, "shots": 10_000,
        "query": 10_000, "eval_query": 10_000, "filters": 2048, "widths": 4096, "in_features": 65536,
        "hidden": 65536, "out_features": 100_000, "num_latents": 65536, "meta_batch": 100_000,
        "tasks_per_pass": 100_000, "inner_batch": 1_000_000, "inner_steps": 100_000, "eval_inner_steps": 100_000,
        "eval_at_steps": 100_000, "inner_unroll_length": 100_000, "finetuning_unroll_length": 100_000,
        "threads": 4096, "val_tasks": 10_000_000, "eval_tasks": 10_000_000,
        "eval_shift": 8}  # 289 copies of every image
FIELDS = tuple(f.name for f in fields(Config))
SCHEMA = {f.name: f for f in fields(Config)}
USER_KEYS = tuple(f.name for f in fields(Config) if f.metadata["user"])
DEFAULTS = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(Config)
            if f.metadata["user"]}
# safe_dump writes a Config as the mapping it is
yaml.SafeDumper.add_representer(Config, lambda dumper, config: dumper.represent_dict(config.to_dict()))


def _shape(spec) -> tuple:
    """(base, optional, choices) of a key's type: base is int, float, bool, str, list or
    "choice"; optional when it may be null."""
    kind = spec.type
    optional = False
    if isinstance(kind, UnionType):
        parts = [a for a in get_args(kind) if a is not type(None)]
        optional, kind = True, parts[0]
    if get_origin(kind) is Literal:
        return "choice", optional, get_args(kind)
    if get_origin(kind) is list:
        return list, optional, ()
    return kind, optional, ()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _shown(value: Any) -> str:
    """A value as a user writes it in YAML and --set."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _check_value(name: str, value: Any) -> None:
    """Refuse a value of the wrong type or out of range, in one line naming the key."""
    spec = SCHEMA[name]
    meta = spec.metadata
    base, optional, choices = _shape(spec)
    if optional and value is None:
        return
    null = " or null" if optional else ""
    low, above, below = meta["low"], meta["above"], meta["below"]
    if base == "choice":
        if not any(value == choice and type(value) is type(choice) for choice in choices):  # true is no 1
            must = meta["must"] or f"one of {', '.join(map(str, choices))}{null}"
            raise FewshotError(f"{name} must be {must}, got {brief(value)}")
    elif base is bool:
        if not isinstance(value, bool):
            raise FewshotError(f"{name} must be true{', false' if optional else ' or false'}{null}, got {brief(value)}")
    elif base is int:
        high = HIGH.get(name, WHOLE_MAX)
        if not _is_int(value) or value < low or value > high:
            example = f"; e.g. --set {name}={max(low, 1)}" if not optional else ""
            most = f" (at most {high})" if name in HIGH or (_is_int(value) and value > high) else ""
            raise FewshotError(f"{name} must be a whole number >= {low}{null}{most}, got {brief(value)}{example}")
    elif base is float:
        out_of_range = _is_number(value) and ((low is not None and value < low) or
                                              (above is not None and value <= above))
        if not _is_number(value) or out_of_range:
            bound = f" >= {low}" if low is not None else f" > {above}" if above is not None else ""
            default = DEFAULTS[name] if DEFAULTS[name] is not None else 1
            raise FewshotError(f"{name} must be a finite number{bound}{null}, got {brief(value)}; "
                               f"e.g. --set {name}={default}")
        if below is not None and value >= below:
            raise FewshotError(f"{name} must be below {below}, got {brief(value)}")
    elif base is str:
        if not isinstance(value, str):
            if optional:
                raise FewshotError(f"{name} must be a path or name (text), got {brief(value)}; quote it")
            raise FewshotError(f"{name} must be text, got {brief(value)}; quote it: --set {name}='\"...\"'")
    elif base is list:
        what = "positive integers" if low == 1 else f"whole numbers >= {low}"
        if not isinstance(value, list) or (meta["nonempty"] and not value) or len(value) > 1000 or \
                not all(_is_int(v) and low <= v <= HIGH.get(name, WHOLE_MAX) for v in value):
            raise FewshotError(f"{name} must be a list of {what}{null}{_at_most(name)}, e.g. {meta['example']}, "
                               f"got {brief(value)}")


def _at_most(name: str) -> str:
    return f" (each at most {HIGH[name]}, 1000 at most)" if name in HIGH else " (1000 at most)"


def _registries() -> dict:
    """{kind: its registry}. Looking them up loads the registered modules (torch), as
    building the run would a moment later; `fewshot --help` and `fewshot presets` (but for
    its --keys and --markdown) never call it."""
    from .algorithms import ALGORITHMS
    from .data.kinds import DATASETS
    from .models import BACKBONES
    return {"algorithm": ALGORITHMS, "model": BACKBONES, "dataset": DATASETS}


def declared_readers() -> dict[str, dict[str, tuple[str, ...]]]:
    """{kind: {key: the registered names of that kind that read it}}, from the `reads` each
    algorithm, backbone and dataset kind declares. A declaration that the schema does not
    expect (a key that is not `read_by` that kind, e.g. a misspelt one) and a key `read_by`
    a kind that none of its entries declares are bugs, raised as ValueError."""
    declared = {}
    for kind, registry in _registries().items():
        found: dict[str, list[str]] = {}
        for name in registry.names():
            for read in sorted(registry.get(name).reads):
                if read not in SCHEMA or kind not in SCHEMA[read].metadata["read_by"]:
                    raise ValueError(f"{kind} {name!r} declares that it reads {read!r}, which config.Config has "
                                     f"no key {'read_by' if read in SCHEMA else 'named'} {kind!r}")
                found.setdefault(read, []).append(name)
        unread = [name for name in USER_KEYS if kind in SCHEMA[name].metadata["read_by"] and name not in found]
        if unread:
            raise ValueError(f"config key {unread[0]!r} is read_by the {kind}, but no {kind} declares it in `reads`")
        declared[kind] = {read: tuple(names) for read, names in found.items()}
    return declared


def readers(name: str, declared: dict | None = None) -> tuple[str, ...]:
    """Who reads key `name`: the algorithms, models and dataset kinds that declare it, the
    schedules it is read under (`lr_schedule=step`), and the other readers the schema names."""
    meta = SCHEMA[name].metadata
    declared = declared_readers() if declared is None and meta["read_by"] else declared
    names = [reader for kind in meta["read_by"] for reader in declared[kind].get(name, ())]
    if meta["when"]:
        selector, values = meta["when"]
        names.append(f"{selector}={'|'.join(values)}")
    return tuple(names) + meta["readers"]


def _ignored(config: Config, name: str, declared: dict) -> tuple | None:
    """(kind, its readers) when key `name` is set away from its default but the config's
    algorithm, model or dataset (or lr_schedule: the kind) is none of the ones that read it."""
    meta = SCHEMA[name].metadata
    if not meta["refuse_ignored"] or getattr(config, name) == DEFAULTS[name]:
        return None
    return _unread(config, name, declared)


def _unread(config: Config, name: str, declared: dict) -> tuple | None:
    """(kind, its readers) when the config's algorithm, model or dataset (or lr_schedule:
    the kind) is none of the ones that read key `name`, whatever its value."""
    meta = SCHEMA[name].metadata
    kinds = [(kind, declared[kind].get(name, ())) for kind in meta["read_by"]]
    for kind, reading in kinds + ([meta["when"]] if meta["when"] else []):
        if getattr(config, kind) not in reading:
            return kind, reading
    return None


def _ignored_message(config: Config, name: str, value: Any, kind: str, reading: tuple, fix: str) -> str:
    several = len(reading) > 1
    return (f"{name}: {_shown(value)} would be ignored: only {kind}{'s' if several else ''} {', '.join(reading)} "
            f"read{'' if several else 's'} it, and this {kind} is {getattr(config, kind)}; {fix}")


def _check_step_bound(config: Config, fix) -> None:
    """MAML++ learns its rates and batch-norm weights for `inner_steps` steps; meta-test
    steps beyond them would adapt with untrained ones. `fix(key)`: what to do."""
    if config.algorithm != "mamlpp":
        return
    for name in ("eval_inner_steps", "eval_at_steps"):
        value = getattr(config, name)
        counts = value if isinstance(value, list) else [] if value is None else [value]
        if any(count > config.inner_steps for count in counts):
            raise FewshotError(f"MAML++ learns a rate and batch-norm weights per inner step, so {name} "
                               f"({_shown(value)}) > inner_steps ({config.inner_steps}) would adapt with "
                               f"untrained ones; {fix(name)}")


def _check_combinations(config: Config) -> None:
    """Refuse names no registry holds, settings that cannot work together, and settings that
    would be silently ignored."""
    # the registries, not lists here, say which names exist and which keys each reads: adding one is one file
    for kind, registry in _registries().items():
        registry.get(getattr(config, kind))  # "unknown algorithm 'x'; choose one of: ..."
    declared = declared_readers()
    if config.ways < 2 and config.dataset != "sinusoid":  # regression has no classes
        raise FewshotError(f"ways must be at least 2 for classification, got {config.ways}")
    if config.algorithm == "protonet" and config.head:
        raise FewshotError("protonet classifies by the distance to each class's mean embedding and has no head; "
                           "set head: false (--set head=false)")
    for name in USER_KEYS:
        if ignored := _ignored(config, name, declared):
            raise FewshotError(_ignored_message(
                config, name, getattr(config, name), *ignored,
                f"remove {name} from the preset or --set {name}={_shown(DEFAULTS[name])}"))
    most = config.inner_steps
    _check_step_bound(config, lambda name: f"set {name} <= inner_steps (--set {name}="
                                           f"{most if name == 'eval_inner_steps' else [most]})")


def meta_test(config: Config, inner_lr: float | None = None, **asked: Any) -> Config:
    """`config` with the meta-test settings a command asks of a trained run (`fewshot eval`'s
    and `predict`'s inner steps: eval_inner_steps, eval_at_steps), checked as a preset's are,
    except that a key the run's algorithm does not read is refused whatever its value (the
    run's own value is the default then, and asking for it again changes nothing either).
    `inner_lr`: a rate asked for the inner loop at meta-test (it replaces learned rates too,
    so it is no config key), refused where the algorithm has no inner loop to use it."""
    _check_keys(asked, "the settings asked of the run")
    declared = declared_readers()
    if inner_lr is not None and (not _is_number(inner_lr) or inner_lr < 0):
        raise FewshotError(f"--inner-lr must be a finite number >= 0, got {brief(inner_lr)}")
    if inner_lr is not None and _unread(config, "eval_inner_steps", declared):
        raise FewshotError(f"{config.algorithm} adapts with no inner loop at meta-test, so an inner learning rate "
                           f"({inner_lr}) would be ignored; ask this run for no inner learning rate (drop --inner-lr)")
    for name, value in asked.items():
        _check_value(name, value)
        if unread := _unread(config, name, declared):
            raise FewshotError(_ignored_message(config, name, value, *unread,
                                                f"ask this run for no {name}: its {unread[0]} has no use for it"))
    changed = replace(config, **asked)
    _check_step_bound(changed, lambda name: f"ask this run for at most {config.inner_steps} inner steps")
    return changed


def _check_keys(values: Mapping, where: str, allowed: tuple = USER_KEYS) -> None:
    named = [k for k in values if not isinstance(k, str)]
    if named:
        raise FewshotError(f"{where} has a key {brief(named[0])} that is not a name; config keys are words like "
                           f"steps or inner_lr (`fewshot presets --keys` lists them)")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], USER_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FewshotError(f"unknown config key {brief(unknown[0], 40)} in {where}{hint}; `fewshot presets --keys` lists "
                           f"every key")


def validate(config: "Config | Mapping") -> Config:
    """The config as a checked `Config`: keys known, values of their type and range (finite
    numbers only), and no combination that cannot form a task or would be silently ignored;
    before any work starts and before any folder exists. A mapping (a user's dict) becomes
    a Config; a Config is checked as it is."""
    values = _values(config)
    _check_keys(values, "the config", FIELDS)
    for name in USER_KEYS:
        if name in values:
            _check_value(name, values[name])
    checked = config if isinstance(config, Config) else Config(**values)
    _check_combinations(checked)
    return checked


def _values(config: "Config | Mapping") -> dict:
    return config.to_dict() if isinstance(config, Config) else dict(config)


def preset_names() -> list[str]:
    folder = resources.files("fewshot") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> Config:
    """The defaults updated by preset `name` (a preset name or a path to a YAML file); its keys
    are checked, its values by validate() or apply_overrides()."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) and path.is_file():
        values, where = read_yaml(path, "preset file", "give a UTF-8 YAML file of keys and values"), str(path)
    else:
        resource = resources.files("fewshot") / "presets" / f"{name}.yaml"
        if not resource.is_file():
            raise FewshotError(
                f"unknown preset {brief(name)}; choose one of: {', '.join(preset_names())} (or a .yaml file)")
        values, where = load_yaml(resource.read_text(), f"preset {name}"), f"preset {name}"
    values = values or {}
    if not isinstance(values, dict):
        raise FewshotError(f"{where} must be a mapping of keys to values")
    _check_keys(values, where)
    return Config(**values, preset=name)


def parse_overrides(pairs: list[str] | None) -> dict:
    """`["steps=600", "inner_lr=0.1"]` -> {"steps": 600, "inner_lr": 0.1}. Values are YAML
    (plain scalars and lists only: tags and unparsable text are refused)."""
    overrides = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise FewshotError(f"--set takes KEY=VALUE, got {brief(pair)}")
        name = name.strip()
        if value.strip().startswith("!"):
            raise FewshotError(f"--set {brief(name, 40)}={brief(value, 40)}: YAML tags are not accepted; give a "
                               f"plain value")
        try:
            overrides[name] = parse_yaml(value) if value.strip() else None
        except YAMLProblem as problem:
            what = f"is not a value YAML can read ({problem})" if problem.syntax else f"is refused: {problem}"
            raise FewshotError(f"--set {brief(name, 40)}={brief(value, 40)} {what}; give a number, a word, "
                               f"true/false, null or a list like [1, 2]") from None
    _check_keys(overrides, "--set")
    return overrides


def apply_overrides(config: "Config | Mapping", overrides: Mapping) -> Config:
    """`config` updated by `overrides`, checked."""
    return validate({**_values(config), **overrides})


def complete(saved: Mapping) -> Config:
    """A config saved by an older fewshot, with the keys added since at their defaults. What
    the older code ignored it ignores too, so that the run resumes and evaluates as before:
    keys this version does not know (none was ever removed: a newer version's, or a hand
    edit) are dropped, and keys the run's algorithm, model or dataset does not read (refused
    in new configs) go back to their defaults. The values are checked by validate()."""
    config = Config(**{name: value for name, value in _values(saved).items() if name in SCHEMA})
    declared = declared_readers()
    for name in USER_KEYS:
        if _ignored(config, name, declared):
            setattr(config, name, DEFAULTS[name])
    return config


def eval_query(config: Config) -> int:
    return config.eval_query or config.query


def eval_ways(config: Config) -> int:
    return config.eval_ways or config.ways


def eval_inner_lr(config: Config) -> float:
    return config.eval_inner_lr if config.eval_inner_lr is not None else config.inner_lr


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def type_name(name: str) -> str:
    base, optional, choices = _shape(SCHEMA[name])
    if choices:
        text = " | ".join(map(str, choices))
    else:
        text = {int: "int", float: "float", bool: "bool", str: "text", list: "list[int]"}[base]
    return text + (" | null" if optional else "")


def range_text(name: str) -> str:
    meta = SCHEMA[name].metadata
    parts = [f">= {meta['low']}" if meta["low"] is not None else "", f"> {meta['above']}"
             if meta["above"] is not None else "", f"< {meta['below']}" if meta["below"] is not None else "",
             f"<= {HIGH[name]}" if name in HIGH else ""]
    text = ", ".join(p for p in parts if p)
    if SCHEMA[name].type in (float, float | None):
        text = ("finite, " + text) if text else "finite"
    if SCHEMA[name].type in (list[int], list[int] | None) and text:
        text = ("non-empty, each " if meta["nonempty"] else "each ") + text
    return text or "-"


def schema_lines() -> list[str]:
    """The schema, one key per line: key, type, default, range, read by, meaning."""
    rows = [("key", "type", "default", "range", "read by", "meaning")]
    declared = declared_readers()
    for name in USER_KEYS:
        reading = readers(name, declared)
        rows.append((name, type_name(name), _shown(DEFAULTS[name]), range_text(name),
                     ",".join(reading) if reading else "-", SCHEMA[name].metadata["meaning"]))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5] for row in rows]
