"""Evaluation on a fixed, seeded set of tasks: two evaluations of one checkpoint
print identical numbers."""
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from . import algorithms, checkpoint, data, precision
from .algorithms.base import Algorithm, inner_loop_words
from .config import Config, eval_query, eval_ways, meta_test
from .data.kinds import SPLITS
from .device import choose_device
from .errors import FewshotError, whole_number
from .runs import local, recorded_data

if TYPE_CHECKING:
    from .data.episodes import DeviceEpisodes, EpisodeSampler
    from .data.sinusoid import SinusoidSampler


def confidence(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width, 1.96 * std / sqrt(n), as the few-shot literature reports."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


def depends_on_the_batch(algorithm: Algorithm) -> bool:
    """Whether the algorithm's outputs for one input depend on the other inputs of its
    batch: a network with batch norm on batch statistics at test (`batch_norm:
    transductive`), unless the algorithm already classifies each input on its own."""
    return algorithm.model.batch_norm_mode == "transductive" and not algorithm.predicts_each_input_alone


def predict_alone(algorithm: Algorithm, adapted: Any, support_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The outputs of each input of `x` as it would get them on its own: where batch
    statistics would let the inputs see each other, each is run in a batch of the support
    set and itself (as Reptile's non-transductive evaluation does)."""
    if not depends_on_the_batch(algorithm):
        return algorithm.predict(adapted, x)
    if algorithm.embeds_support_with_queries:  # its own batch is already the support set plus x
        return torch.cat([algorithm.predict(adapted, x[i:i + 1]) for i in range(len(x))])
    return torch.cat([algorithm.predict(adapted, torch.cat([support_x, x[i:i + 1]]))[-1:] for i in range(len(x))])


def shifted(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Copies of the images `x` (N, C, H, W) moved by every whole-pixel offset of at most
    `pixels` each way, (2 pixels + 1)^2 of them with the unmoved one first, stacked as
    (copies, N, C, H, W); the edge a move uncovers repeats the image's border pixels."""
    if pixels == 0:
        return x[None]
    height, width = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pixels,) * 4, mode="replicate")
    offsets = [(0, 0)] + [(dy, dx) for dy in range(-pixels, pixels + 1) for dx in range(-pixels, pixels + 1)
                          if dy or dx]
    return torch.stack([padded[..., pixels + dy:pixels + dy + height, pixels + dx:pixels + dx + width]
                        for dy, dx in offsets])


def shifted_support(support_x: torch.Tensor, support_y: torch.Tensor,
                    shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The support set grown by each image's shifted copies (`shifted`), each in its image's class."""
    if not shift:
        return support_x, support_y
    copies = shifted(support_x, shift)
    return copies.flatten(0, 1), support_y.repeat(len(copies))


def shift_averaged(outputs_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shift: int,
                   together: bool = False) -> torch.Tensor:
    """`outputs_of(x)`, each input's outputs averaged over its shifted copies (`shifted`).
    `together`: all copies in one call, where an input's outputs do not depend on its batch
    (else each copy of the batch is a batch of its own, as the unshifted one is)."""
    copies = shifted(x, shift)
    if len(copies) == 1:
        return outputs_of(x)
    if together:
        return outputs_of(copies.flatten(0, 1)).unflatten(0, copies.shape[:2]).mean(0)
    return torch.stack([outputs_of(copy) for copy in copies]).mean(0)


def meta_test_outputs(algorithm: Algorithm, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                      counts: Iterable[int], lr: float | None = None, alone: bool = False,
                      shift: int = 0) -> dict[int, torch.Tensor]:
    """{count: the outputs for `query_x` after adapting on the support set with `count`
    inner steps}. `alone`: each query classified on its own (`predict_alone`). `shift`
    (eval_shift): test-time augmentation, the support set grown by each image's shifted
    copies and each query's outputs averaged over its own; for ProtoNets that is the mean
    embedding of the copies, both sides."""
    support_x, support_y = shifted_support(support_x, support_y, shift)
    outputs = {}
    for count in counts:
        adapted = algorithm.adapt(support_x, support_y, count, lr)
        outputs[count] = shift_averaged(
            lambda x: predict_alone(algorithm, adapted, support_x, x) if alone else algorithm.predict(adapted, x),
            query_x, shift, together=not depends_on_the_batch(algorithm))
    return outputs


def ensemble_outputs(members: Sequence[Algorithm], support_x: torch.Tensor, support_y: torch.Tensor,
                     query_x: torch.Tensor, steps: int | None = None, lr: float | None = None, alone: bool = False,
                     shift: int = 0) -> torch.Tensor:
    """The outputs of trained runs together for `query_x`: each adapts on the support set
    its own way (`steps` inner steps for all, by default each its own meta-test ones,
    `meta_test_outputs`), then a query's log-probabilities are averaged over the members:
    the product of their class probabilities, renormalised (for ProtoNets, the distance
    in their embeddings put side by side); regression outputs are averaged. One member:
    its outputs as `meta_test_outputs` gives them."""
    outputs = []
    for member in members:
        count = meta_test_steps(member) if steps is None else steps
        outputs.append(meta_test_outputs(member, support_x, support_y, query_x, [count], lr, alone, shift)[count])
    if len(outputs) == 1:  # one run: its own outputs, unchanged
        return outputs[0]
    if members[0].family.metric_name == "accuracy":
        outputs = [output.log_softmax(-1) for output in outputs]
    return torch.stack(outputs).mean(0)


def describe_shift(shift: int) -> str:
    """The words for a test-time augmentation by shifts, '' for none."""
    if not shift:
        return ""
    return (f", each image also shifted by up to {shift} pixel{'s' if shift > 1 else ''} each way "
            f"({(2 * shift + 1) ** 2} copies: support grown, query outputs averaged)")


def meta_test_steps(algorithm: Algorithm, config: Config | None = None) -> int:
    """The inner steps `algorithm` takes at meta-test under `config` (its own by default):
    eval_inner_steps where it reads that key, else none (ProtoNets)."""
    config = algorithm.config if config is None else config
    return config.eval_inner_steps if "eval_inner_steps" in algorithm.reads else 0


def evaluate(algorithm: Algorithm | Sequence[Algorithm], sampler: "EpisodeSampler | DeviceEpisodes | SinusoidSampler",
             n_tasks: int,
             steps: int | None = None, lr: float | None = None, device: str | torch.device = "cpu",
             progress: bool = False, desc: str = "eval", at_steps: Iterable[int] = (),
             shift: int = 0) -> dict[str, Any]:
    """Adapt on each task's support set and score its query set; task i is the same
    for every call with the same sampler seed. `at_steps` adds the score after other
    numbers of inner steps (e.g. 0, 1) under "by_steps". A sampler of Lake-style runs
    (`sampler.alone`) has each query classified on its own. Where each task is drawn
    within one alphabet, "by_alphabet" gives the score of each alphabet's tasks.
    `shift`: test-time augmentation by shifts of up to that many pixels (eval_shift,
    `meta_test_outputs`). Several algorithms: an ensemble (`ensemble_outputs`), each
    adapting with `steps` or its own meta-test steps; `at_steps` needs one."""
    members = [algorithm] if isinstance(algorithm, Algorithm) else list(algorithm)
    if len(members) > 1 and at_steps:
        raise FewshotError("--at-steps reports one run after other numbers of inner steps; evaluate the runs of "
                           "an ensemble one at a time for that")
    alone = getattr(sampler, "alone", False)  # generated samplers (sinusoid) have no such rule
    alphabet_of = getattr(sampler, "alphabet_of", lambda index: None)
    was_training = [member.training for member in members]
    for member in members:
        member.eval()
    main = steps if steps is not None else meta_test_steps(members[0])
    counts = sorted({main, *at_steps})
    outputs = {count: [] for count in counts}
    for index in tqdm(range(n_tasks), desc=desc, unit="task", disable=not progress, leave=False):
        task = sampler.batch(index, 1)[0].to(device)
        if len(members) == 1:
            produced = meta_test_outputs(members[0], task.support_x, task.support_y, task.query_x, counts, lr,
                                         alone, shift)
        else:
            produced = {main: ensemble_outputs(members, task.support_x, task.support_y, task.query_x, steps, lr,
                                               alone, shift)}
        for count, out in produced.items():
            outputs[count].append((out, task.query_y))
    for member, mode in zip(members, was_training):
        member.train(mode)
    # scored once every task has run: on an accelerator the tasks queue up without a
    # host synchronisation per task
    scores = {count: [members[0].family.metric(out, y) for out, y in pairs] for count, pairs in outputs.items()}
    mean, ci95 = confidence(scores[main])
    by_steps = {str(count): dict(zip(("mean", "ci95"), confidence(values))) for count, values in scores.items()}
    result = {"mean": mean, "ci95": ci95, "tasks": n_tasks, "scores": scores[main], "by_steps": by_steps}
    alphabets = [alphabet_of(index) for index in range(n_tasks)]
    if alphabets and alphabets[0] is not None:
        result["by_alphabet"] = scores_by_alphabet(alphabets, scores[main])
    return result


def alphabet_name(alphabet: Hashable) -> str:
    """An alphabet as people read it: Omniglot's (name, quarter turns) as the name,
    "turned 90" etc. where turned."""
    name, turns = alphabet if isinstance(alphabet, tuple) else (alphabet, 0)
    return f"{name} turned {90 * turns}" if turns else str(name)


def scores_by_alphabet(alphabets: Sequence[Hashable], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """{alphabet: mean, ci95 and number of its tasks}, alphabets in the order of their names."""
    grouped = {}
    for alphabet, score in zip(alphabets, scores):
        grouped.setdefault(alphabet_name(alphabet), []).append(score)
    return {name: {**dict(zip(("mean", "ci95"), confidence(values))), "tasks": len(values)}
            for name, values in sorted(grouped.items())}


def load_algorithm(state: dict[str, Any], device: str | torch.device = "cpu") -> Algorithm:
    algorithm = algorithms.build(state["config"])
    algorithm.load_state_dict(state["algorithm"])
    return algorithm.to(device)


def asked_settings(steps: int | None = None, at_steps: list[int] | None = None,
                   shift: int | None = None) -> dict[str, Any]:
    """The config keys of the meta-test settings asked of a trained run by --inner-steps,
    --at-steps and --shift (those given), each count checked to be one; `config.meta_test`
    then checks them as a preset's are."""
    for value, flag in ((steps, "--inner-steps"), (shift, "--shift")):
        if value is not None:
            whole_number(value, 0, flag)
    asked = {"eval_inner_steps": steps, "eval_at_steps": list(at_steps) if at_steps else None, "eval_shift": shift}
    return {name: value for name, value in asked.items() if value is not None}


def trained_run(target: str | Path, steps: int | None = None, lr: float | None = None,
                device: str | torch.device | None = "cpu",
                at_steps: list[int] | None = None, shift: int | None = None) -> tuple[dict, Config, torch.device]:
    """(checkpoint state, config, device) of a trained run made ready for meta-test: the
    device chosen, the checkpoint loaded (a pretraining refused), and the inner `steps`,
    rate `lr`, `at_steps` and `shift` (eval_shift) asked of it checked as a preset's
    meta-test settings are (`config.meta_test`: e.g. more steps than MAML++ learned rates
    for, any steps or rate for ProtoNets, no shifts of embeddings)."""
    asked = asked_settings(steps, at_steps, shift)
    device = choose_device(device)[0]
    state = checkpoint.load(target, run=True)
    return state, meta_test(state["config"], lr, **asked), device


ENSEMBLE_KEYS = ("dataset", "split", "image_size", "channels", "embedding_dataset")  # what makes the tasks


def ensemble_runs(target: str | Path, state: dict, config: Config, others: Sequence[str | Path],
                  steps: int | None = None, lr: float | None = None,
                  shift: int | None = None) -> list[tuple[str | Path, dict, Config]]:
    """(name, state, config) of `target` (`state`, `config`), then of each of the `others`,
    the runs evaluated together with it as an ensemble, made ready for meta-test as
    `trained_run` makes it, each checked to read the same tasks the same way: the same data
    kind, split (so that the validation classes are none of its training classes), image
    size and conversion."""
    loaded = [(target, state, config)]
    for other in others:
        other_state, other_config, _ = trained_run(other, steps, lr, "cpu", shift=shift)
        for key in ENSEMBLE_KEYS:
            if getattr(other_config, key) != getattr(config, key):
                raise FewshotError(f"{other} was trained with {key} {getattr(other_config, key)!r} and {target} "
                                   f"with {getattr(config, key)!r}; the runs of an ensemble are scored on the same "
                                   f"tasks: give runs trained on the same data, split and image size")
        if other_state.get("preprocessing") != state.get("preprocessing"):
            raise FewshotError(f"{other} turns images into inputs differently from {target} "
                               f"({other_state.get('preprocessing')} against {state.get('preprocessing')}); the runs "
                               f"of an ensemble read the same inputs: give runs trained on the same prepared data")
        loaded.append((other, other_state, other_config))
    return loaded


def check_answers_ways(target: str | Path, algorithm: Algorithm, ways: int, tasks: str, hint: str) -> None:
    """Refuse a network whose fixed output layer answers other than `ways` classes, with
    one line naming the `tasks` it was given and a `hint`."""
    config = algorithm.config
    if not algorithm.any_number_of_classes and config.ways != ways:
        raise FewshotError(f"{target} is a {config.algorithm} network with a fixed {config.ways}-way output layer, "
                           f"and {tasks} {ways}-way; {hint}")


def describe_members(runs: Sequence[tuple[str | Path, dict, Config]], algorithms: Sequence[Algorithm],
                     steps: int | None, lr: float | None) -> list[dict]:
    """The record of each run of an ensemble (`ensemble_runs`): its checkpoint, step, preset
    and adaptation."""
    records = []
    for (target, state, _), algorithm in zip(runs, algorithms):
        count = meta_test_steps(algorithm) if steps is None else steps
        records.append({"checkpoint": str(checkpoint.find(target)), "step": state["step"],
                        "preset": state["config"].preset, "algorithm": state["config"].algorithm,
                        "inner_steps": count, "adaptation": algorithm.describe_adaptation(count, lr)})
    return records


def evaluate_checkpoint(target: str | Path, tasks: int | None = None, split: str = "test", steps: int | None = None,
                        lr: float | None = None, data_spec: str | Path | None = None, seed: int | None = None,
                        device: str | None = "cpu", progress: bool = True, at_steps: list[int] | None = None,
                        any_kind: bool = False, shift: int | None = None,
                        ensemble: Sequence[str | Path] = ()) -> dict:
    """Everything `fewshot eval` does, as a dict. `device` None: the best device present.
    `data_spec`: other data to evaluate on, of the kind the run was trained on unless `any_kind`.
    Other inner `steps`, `lr`, `at_steps` or `shift` than the run's are checked by `trained_run`.
    `ensemble`: other runs scored together with `target` (`ensemble_outputs`) on its tasks
    and its test-time shifts, each adapting with `steps` or its own meta-test steps."""
    for value, low, flag in ((tasks, 1, "--tasks"), (seed, 0, "--seed")):
        if value is not None:
            whole_number(value, low, flag)
    state, config, device = trained_run(target, steps, lr, device, at_steps, shift)
    trained = ensemble_runs(target, state, config, ensemble, steps, lr, shift)
    # the data given, else the data it was trained on, also from another folder or FEWSHOT_HOME
    where = str(data_spec) if data_spec is not None else recorded_data(config, state.get("data_location"))
    config = config.unchecked_replace(data=where)
    if data_spec is not None:
        check_data_kind(config, trained_kind(state), any_kind)
    if split not in SPLITS:
        raise FewshotError(f"unknown split {split!r}; choose {', '.join(SPLITS)}")
    dataset, refs = data.load(config, progress)
    sampler = data.sampler(config, dataset, refs, split, config.eval_seed if seed is None else seed,
                           query=eval_query(config), ways=eval_ways(config))
    algorithm = load_algorithm(state, device)
    members = [algorithm] + [load_algorithm(other_state, device) for _, other_state, _ in trained[1:]]
    for other, member in zip(ensemble, members[1:]):
        check_answers_ways(other, member, eval_ways(config), f"the tasks of {target} are",
                           f"give runs that answer {eval_ways(config)} classes, or ProtoNets (any number of ways)")
    n_tasks = config.eval_tasks if tasks is None else tasks
    # a preset's own at_steps report one run; an ensemble reports only the steps it adapts with
    at_steps = (config.eval_at_steps or ()) if at_steps is None and not ensemble else (at_steps or ())
    with precision.configured(config.precision, device):  # the arithmetic the run validated in
        result = evaluate(members, sampler, n_tasks, steps, lr, device, progress, desc=f"eval {split}",
                          at_steps=at_steps, shift=config.eval_shift)
    if ensemble:
        result["members"] = describe_members(trained, members, steps, lr)
    own_steps = meta_test_steps(algorithm, config)
    result.update({
        "checkpoint": str(checkpoint.find(target)), "step": state["step"], "split": split,
        "preset": config.preset, "shots": config.shots, "algorithm": config.algorithm,
        "ways": eval_ways(config), "query": eval_query(config), "inner_steps": own_steps,
        "inner_lr": algorithm.describe_inner_lr() if lr is None else lr,
        "adaptation": algorithm.describe_adaptation(own_steps, lr), "device": str(device),
        "metric": algorithm.family.metric_name,
        "seed": config.eval_seed if seed is None else seed, "shift": config.eval_shift,
    })
    return result


def trained_kind(state: dict) -> str | None:
    """The kind of data a checkpoint was trained on (a prepared folder's own kind, which a
    preset's `dataset` need not be); None where nothing says."""
    from .data.images import is_prepared, read_dataset
    recorded = (state.get("preprocessing") or {}).get("dataset")
    if recorded:
        return recorded
    location = state.get("data_location")  # checkpoints from before the kind was recorded
    if isinstance(location, dict) and isinstance(location.get("path"), str):
        path = local(location["path"])
        return read_dataset(path, None).meta.get("dataset") if is_prepared(path) else state["config"].dataset
    return None


def check_data_kind(config: Config, trained: str | None, any_kind: bool = False) -> None:
    """Refuse a prepared dataset (`config.data`) of another kind than `trained`, the run's,
    unless `any_kind`: an Omniglot model scored on miniImageNet gives chance, not an answer.
    A raw copy is decoded by the run's own kind, which refuses another layout itself."""
    from .data.images import home, is_prepared, read_dataset
    path = Path(config.data).expanduser()
    if not path.exists():
        path = home() / str(config.data)
    path = data.kind(config.dataset).locate(path, config)
    if trained is None or any_kind or not is_prepared(path):
        return
    theirs = read_dataset(path, None).meta.get("dataset")
    if theirs != trained:
        raise FewshotError(f"{path} holds {theirs} data, but the run was trained on {trained} data "
                           f"({config.image_size}x{config.image_size}, {config.channels} channel"
                           f"{'s' if config.channels > 1 else ''}); give data of that kind, or pass --any-kind to "
                           f"evaluate it on these anyway (converted to that size and those channels)")


def describe_ensemble(result: dict[str, Any]) -> list[str]:
    """The lines naming the runs of an ensemble's result, none for one run."""
    members = result.get("members")
    if not members:
        return []
    return ([f"  an ensemble of {len(members)} runs, each query's log-probabilities averaged:"] +
            [f"    {m['checkpoint']} ({m['preset']} step {m['step']}): {m['adaptation']}" for m in members])


def describe(result: dict[str, Any]) -> str:
    percent = result["metric"] == "accuracy"

    def value(mean, ci95):
        return f"{100 * mean:.2f}% +- {100 * ci95:.2f}%" if percent else f"{mean:.4f} +- {ci95:.4f}"

    task = (f"{result['ways']}-way {result['shots']}-shot" if percent else f"{result['shots']}-shot")
    queries = f"{result['query']} {'query' if result['query'] == 1 else 'queries'} per {'class' if percent else 'task'}"
    adaptation = ((result.get("adaptation") or inner_loop_words(result["inner_steps"], result["inner_lr"])) +
                  describe_shift(result.get("shift", 0)))
    lines = [f"{result['preset']} step {result['step']}, {result['split']} split: {result['metric']} "
             f"{value(result['mean'], result['ci95'])} (95% CI, {result['tasks']} tasks, {task}, {queries}, "
             f"{adaptation})"] + describe_ensemble(result)
    if len(result["by_steps"]) > 1:
        lines += [f"  after {count:>3} steps: {result['metric']} {value(r['mean'], r['ci95'])}"
                  for count, r in sorted(result["by_steps"].items(), key=lambda item: int(item[0]))]
    if result.get("by_alphabet"):
        width = max(len(name) for name in result["by_alphabet"])
        lines += [f"  {name:<{width}}  {result['metric']} {value(r['mean'], r['ci95'])} ({r['tasks']} tasks)"
                  for name, r in result["by_alphabet"].items()]
    return "\n".join(lines)


__all__ = ["asked_settings", "check_answers_ways", "confidence", "depends_on_the_batch", "describe",
           "describe_ensemble", "describe_members", "describe_shift", "ensemble_outputs", "ensemble_runs", "evaluate",
           "evaluate_checkpoint", "load_algorithm", "meta_test_outputs", "meta_test_steps", "predict_alone",
           "shift_averaged", "shifted", "shifted_support"]
