"""`fewshot embed`: image embeddings in LEO's file format, from a backbone pretrained
on the meta-train classes only.

1. Pretraining: the preset's backbone (`model`: conv4 with the preset's filters
   and downsampling, or `--backbone resnet12` / `wrn28_10`, see models/resnet.py;
   the preset's image size and channels; inductive batch norm, so that running
   statistics serve at embedding time) with a linear head over all meta-train
   classes of the preset's split (Omniglot: each rotation its own class, as in
   meta-training), trained by
   ordinary supervised classification (cross-entropy, Adam) on mini-batches drawn
   from meta-train images only. Validation and test classes are never seen.
2. Embedding: every image of every split through the backbone's features, batch
   norm in evaluation mode: `center`, the image itself; `multiview`, the mean of
   the features of six fixed views (the image, its horizontal flip, and four
   crops shifted by an eighth of the side toward each corner after reflection
   padding).

Output: OUT/center/{train,val,test}_embeddings.pkl and OUT/multiview/... (or only
the crops asked for: `--crops center` skips the six-view pass), in
LEO's format (see data/embeddings.py), keys `<row>-<class>-<class>_<index>`
with class names made key-safe ("-", "_", "/" and spaces become "."), labels
the class index within the split. Train LEO on them with the LEO preset made for
them (`leo_presets`: by the image dataset and the dimension, which `fewshot embed`
prints and OUT/embed.json records).

Pretraining writes OUT/metrics.jsonl and metrics.csv (loss and batch accuracy every
100 steps; `fewshot plot OUT` draws them). Every `val_every` steps it also validates
the features on the validation classes, which pretraining never sees: the accuracy of
nearest-prototype classification (ProtoNets' rule on the features as they are, nothing
trained) on VAL_TASKS fixed tasks of the preset's ways, shots and queries; the best
weights by it are kept in OUT/pretrain-best.pt, and the embedding files are made with
them (embed.json says from which step). Validation reads no random state of the
pretraining and updates no running statistics: the run is the same with it or without.

Resumable: pretraining runs through the training loop of loop.py (signals, stop_after,
log lines), and OUT/pretrain.pt holds the backbone, optimizer, RNG and step every
`save_every` steps (and at the end, or on Ctrl-C / SIGTERM); a rerun with the same --out
continues from it, and keeps the embedding files already written.
"""
import json
import math
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, data, memory, models, precision
from .config import Config, eval_query, eval_ways
from .data.embeddings import CROPS, file_name, make_key, write_leo_pickles
from .data.images import ImageClass
from .data.kinds import SPLITS
from .data.episodes import to_float
from .device import choose_device
from .errors import FewshotError, whole_number
from .files import write_text
from .loop import Loop
from .runs import MetricsLog, local, portable

# the keys the pretraining network sets (a head over all classes, inductive batch norm): a backbone
# that reads them (models.BACKBONES, their `reads`) can be pretrained
PRETRAINING_KEYS = frozenset({"head", "batch_norm"})
LOG_EVERY = 100    # pretraining steps per row of OUT/metrics.jsonl and .csv
EMBED_BATCH = 32  # images per forward pass when embedding (x 6 views for multiview)
VAL_TASKS = 600   # nearest-prototype tasks per validation of the features (the literature's test count)


def check_out(out: str | Path) -> None:
    """Refuse an --out that is a file, a training run (its metrics would be overwritten) or a dataset."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FewshotError(f"--out {out} is a file; give a folder for the embedding files")
    if any((out / name).exists() for name in ("config.yaml", "last.pt", "best.pt")) or (
            (out / "metrics.jsonl").exists() and not (out / "pretrain.pt").exists()):
        raise FewshotError(f"--out {out} holds a training run (its metrics would be overwritten); "
                           f"give another folder for the embedding files")
    if (out / "index.json").is_file():
        raise FewshotError(f"--out {out} holds a prepared dataset; give another folder for the embedding files")


def key_safe(name: str) -> str:
    return re.sub(r"[-_/\s]+", ".", str(name)).strip(".") or "class"


def class_names(refs: Iterable[ImageClass]) -> list[str]:
    """Key-safe, unique names for a split's classes (data.images.ImageClass)."""
    names, seen = [], set()
    for ref in refs:
        name = key_safe(ref.name)
        while name in seen:
            name += ".x"
        seen.add(name)
        names.append(name)
    return names


def views(x: torch.Tensor) -> torch.Tensor:
    """The multiview set for a batch N x C x H x W: 6 x N x C x H x W."""
    side = x.shape[-1]
    pad = max(1, side // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    shifted = [padded[..., i:i + side, j:j + side] for i in (0, 2 * pad) for j in (0, 2 * pad)]
    return torch.stack([x, x.flip(-1), *shifted])


def crop_features(model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                  crop: str) -> torch.Tensor:
    """The embeddings of images x for `crop` (center: the image itself; multiview: the mean
    over its six `views`), batch norm in evaluation mode: what the embedding files hold."""
    if crop == "center":
        return model.features(params, x, bn_training=False)
    v = views(x)
    return model.features(params, v.flatten(0, 1), bn_training=False).reshape(len(v), len(x), -1).mean(0)


def split_features(model: torch.nn.Module, params: dict[str, torch.Tensor], dataset, refs: list[ImageClass],
                   preprocessing: dict, device: torch.device, crops: Iterable[str], progress: bool = False,
                   desc: str = "embed") -> tuple[dict[str, np.ndarray], list[tuple[int, int, int, int]]]:
    """({crop: features of every image of the classes `refs`, in order}, [(row, turns,
    class index, image index)] of those images), batch norm in evaluation mode."""
    jobs = [(ref.start + i, ref.rotation, c, i) for c, ref in enumerate(refs) for i in range(ref.count)]
    features = {crop: [] for crop in crops}
    with torch.no_grad():
        for begin in tqdm(range(0, len(jobs), EMBED_BATCH), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            chunk = jobs[begin:begin + EMBED_BATCH]
            x = to_float(_pixels(dataset, [j[0] for j in chunk], [j[1] for j in chunk]), preprocessing).to(device)
            for crop, parts in features.items():
                parts.append(crop_features(model, params, x, crop).float().cpu().numpy())
    return ({crop: np.concatenate(parts) if parts else np.zeros((0, model.features_size), np.float32)
             for crop, parts in features.items()}, jobs)


def prototype_accuracy(features: np.ndarray, classes: np.ndarray, ways: int, shots: int, query: int, tasks: int,
                       seed: int) -> tuple[float, float]:
    """Mean and 95% half-width of the accuracy of nearest-prototype classification (squared
    Euclidean distance to each class's mean support feature) over `tasks` tasks drawn from
    `features` (one row per image, `classes` its class): task i is fixed by (seed, i)."""
    from .evaluate import confidence
    members = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    features = torch.from_numpy(features).double()
    scores = []
    for index in range(tasks):
        rng = np.random.default_rng([seed, index])
        chosen = rng.choice(len(members), ways, replace=False)
        picks = np.stack([rng.choice(members[c], shots + query, replace=False) for c in chosen])
        prototypes = features[torch.from_numpy(picks[:, :shots])].mean(1)
        queries = features[torch.from_numpy(picks[:, shots:].reshape(-1))]
        predicted = torch.cdist(queries, prototypes).argmin(1)
        scores.append(float((predicted == torch.arange(ways).repeat_interleave(query)).double().mean()))
    return confidence(scores)


def check_validation(refs: list[ImageClass], ways: int, shots: int, query: int) -> None:
    """Refuse validation tasks the validation classes cannot give, naming the fix."""
    fit = [ref for ref in refs if ref.count >= shots + query]
    if len(fit) < ways:
        raise FewshotError(f"validating the features takes {ways}-way {shots}-shot tasks with {query} queries, but "
                           f"the val split has {len(fit)} classes of {shots + query} images or more; pass "
                           f"--val-every 0 to pretrain without validation")


def _pixels(dataset, rows, rotations):
    pixels = np.ascontiguousarray(dataset.images[rows])
    for i, rotation in enumerate(rotations):
        if rotation:
            pixels[i] = np.rot90(pixels[i], rotation, axes=(-2, -1))
    return pixels


def check_crops(crops: tuple[str, ...]) -> None:
    unknown = sorted(set(crops) - set(CROPS))
    if unknown or not crops:
        raise FewshotError(f"--crops takes {' and/or '.join(CROPS)}, got {', '.join(crops) or 'nothing'}")


def backbone_options(config: Config, dataset) -> dict:
    """What a backbone's files record of how it was made (the pretraining's own settings
    are added by `_embed`): its preset, images, split and network."""
    return {"preset": config.preset, "data": portable(Path(dataset.root).resolve()), "split": config.split,
            "model": config.model, "widths": config.widths, "filters": config.filters,
            "downsample": config.downsample, "image_size": config.image_size, "seed": config.seed}


def pretrainable() -> list[str]:
    """The backbones `fewshot embed` can pretrain."""
    return [name for name in models.BACKBONES.names() if PRETRAINING_KEYS <= models.BACKBONES.get(name).reads]


def embed(config: Config, out: str | Path, steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
          save_every: int = 500, device: str | None = "cpu", progress: bool = True, stop_after: int | None = None,
          crops: tuple[str, ...] = CROPS, time_limit: float | None = None, val_every: int = 1000) -> dict:
    """Pretrain on the meta-train classes of `config`'s dataset, then write LEO embedding
    files under `out` for each of `crops` (multiview costs six forward passes per image);
    returns {"out", "dim", "steps", "files", "leo_presets", "embedded_step"}
    ("leo_presets": leo_presets(); "embedded_step": the step of the weights embedded).
    `device` None: the best device present. In `config`'s precision, as `fewshot train`:
    its flags throughout (restored after), a pretraining step's forward under its autocast.
    `time_limit` (seconds): pretraining stops cleanly, saved, once that much time has passed.
    `val_every`: validate the features every that many steps (0: never; see the module's
    docstring), the embedding then made from the best weights by it."""
    whole_number(steps, 1, "--pretrain-steps")
    whole_number(batch_size, 1, "--batch-size")
    whole_number(val_every, 0, "--val-every")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise FewshotError(f"--lr must be a finite number > 0, got {lr}")
    device = choose_device(device)[0]
    with precision.configured(config.precision, device):
        return _embed(config, out, steps, batch_size, lr, save_every, device, progress, stop_after, crops, time_limit,
                      val_every)


def _embed(config, out, steps, batch_size, lr, save_every, device, progress, stop_after, crops, time_limit,
           val_every):
    check_crops(crops)
    if data.kind(config.dataset).generated or data.kind(config.dataset).features:
        raise FewshotError(f"fewshot embed needs an image dataset; the preset's dataset is {config.dataset!r}")
    if config.model not in pretrainable():
        raise FewshotError(f"fewshot embed pretrains one of {', '.join(pretrainable())}; the preset's model is "
                           f"{config.model!r} (choose one with --backbone)")
    out = Path(out)
    check_out(out)
    memory.check_batch(config, batch_size, device)  # before the folder or the data
    out.mkdir(parents=True, exist_ok=True)
    dataset, refs = data.load(config, progress)
    preprocessing = data.preprocessing(dataset, config)
    train_refs = refs["train"]
    if len(train_refs) < 2:
        raise FewshotError(f"the train split of {dataset.root} has {len(train_refs)} classes; pretraining "
                           f"needs two or more")
    task_shape = (eval_ways(config), config.shots, eval_query(config))
    validates = val_every > 0 and steps >= val_every
    if validates:
        check_validation(refs["val"], *task_shape)
    options = {**backbone_options(config, dataset), "batch_size": batch_size, "lr": lr}
    backbone_config = config.unchecked_replace(ways=len(train_refs), head=True, batch_norm="inductive",
                                               per_step_bn=False)
    torch.manual_seed(config.seed)
    model = models.build(backbone_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step, state_path, best_path = 0, out / "pretrain.pt", out / "pretrain-best.pt"
    best = {"metric": None, "step": None}  # the best validation so far, kept in pretrain.pt across resumes
    if state_path.exists():
        state = checkpoint.load(state_path)
        saved = {"model": "conv4", "widths": None, **state["options"]}  # files from before --backbone: conv4
        saved["data"] = portable(local(saved["data"]).resolve())  # files from before `portable`: absolute
        changed = sorted(k for k in options if saved.get(k) != options[k])
        if changed:
            raise FewshotError(f"{state_path} was pretrained with other settings ({', '.join(changed)}); "
                               f"choose another --out or delete that file to start again")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        best = state.get("best", best)

    def save():
        checkpoint.save(state_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        rng=torch.get_rng_state(), step=loop.step, options=options, config=backbone_config,
                        best=best)

    def validate(row):
        """Score the features on the validation tasks into `row`; keep the weights if best."""
        model.eval()
        features, jobs = split_features(model, dict(model.named_parameters()), dataset, refs["val"], preprocessing,
                                        device, ("center",))
        classes = np.array([job[2] for job in jobs])
        row["val_metric"], row["val_ci95"] = prototype_accuracy(features["center"], classes, *task_shape,
                                                                VAL_TASKS, config.eval_seed)
        model.train()
        if best["metric"] is None or row["val_metric"] > best["metric"]:
            best.update(metric=row["val_metric"], step=loop.step)
            checkpoint.save(best_path, model=model.state_dict(), step=loop.step, options=options,
                            config=backbone_config, val_metric=row["val_metric"])

    # every meta-train image with its class; batch `i` is a pure function of (seed, i)
    rows = np.concatenate([np.arange(ref.start, ref.start + ref.count) for ref in train_refs])
    labels = np.concatenate([np.full(ref.count, c) for c, ref in enumerate(train_refs)])
    turns = np.concatenate([np.full(ref.count, ref.rotation) for ref in train_refs])
    # the CLI says how to continue a stopped pretraining (run the same command again): no resume line here
    loop = Loop(step, steps, save, desc="pretrain", progress=progress, stop_after=stop_after, time_limit=time_limit)
    logs, window, window_start = [], [], [time.perf_counter()]
    model.train()

    def supervised_step():
        nonlocal window
        pick = np.sort(np.random.default_rng([config.seed, loop.step]).choice(len(rows), batch_size,
                                                                                  replace=len(rows) < batch_size))
        x = to_float(_pixels(dataset, rows[pick], turns[pick]), preprocessing).to(device)
        y = torch.from_numpy(labels[pick]).long().to(device)
        with precision.autocast(config.precision, device):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with loop.signals:  # the weights and the step number change together
            optimizer.step()
            loop.advance()
            window.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
            if loop.terminal:
                loop.bar.set_postfix(loss=f"{window[-1][0]:.3f}")
            validate_now = validates and loop.step % val_every == 0
            if loop.step % LOG_EVERY == 0 or loop.step == steps or validate_now:
                elapsed = time.perf_counter() - window_start[0]
                row = {"step": loop.step, "loss": float(np.mean([w[0] for w in window])),
                       "metric": float(np.mean([w[1] for w in window])), "lr": lr,
                       "sec_per_step": elapsed / len(window), "images_per_s": batch_size * len(window) / elapsed}
                text = ""
                if validate_now:
                    validate(row)
                    text = (f"  val {task_shape[0]}-way {task_shape[1]}-shot prototype accuracy "
                            f"{row['val_metric']:.4f} +- {row['val_ci95']:.4f}")
                logs[0].write(row)
                loop.say(f"pretrain step {loop.step:6d}  loss {row['loss']:.4f}  accuracy {row['metric']:.4f}  "
                         f"{row['sec_per_step']:.3f} s/step  {row['images_per_s']:.0f} img/s{text}")
                window, window_start[0] = [], time.perf_counter()
            if loop.step % save_every == 0 or loop.step == steps:
                save()

    ended = loop.run(supervised_step, start=lambda: logs.append(MetricsLog(out, loop.step)))
    step = loop.step
    if ended["stopped"]:
        return {"out": str(out), "steps": step, "stopped": True, "dim": model.features_size, "files": [],
                "signal": ended["signal"], "reason": ended["reason"]}

    embedded_step = step
    if validates and best["step"] is not None:  # the best weights by validation make the embeddings
        if not best_path.is_file():
            raise FewshotError(f"{best_path}, the best weights by validation (pretraining step {best['step']}), is "
                               f"missing; restore it, or pass --val-every 0 to embed the last weights")
        model.load_state_dict(checkpoint.load(best_path)["model"])
        embedded_step = best["step"]
    files = write_embeddings(model, dataset, refs, preprocessing, out, crops, device, progress)
    write_summary(out, model.features_size, step, embedded_step,
                  best["metric"] if embedded_step == best["step"] else None, options, refs)
    return {"out": str(out), "steps": step, "stopped": False, "dim": model.features_size, "files": files,
            "embedded_step": embedded_step, "leo_presets": leo_presets(config.dataset, model.features_size)}


def write_embeddings(model: torch.nn.Module, dataset, refs: dict[str, list[ImageClass]], preprocessing: dict,
                     out: Path, crops: Iterable[str], device: torch.device, progress: bool) -> list[str]:
    """OUT/<crop>/<split>_embeddings.pkl of every image of every split through `model`
    in evaluation mode (a split whose files are all there already is kept); their paths."""
    model.eval()
    params = dict(model.named_parameters())
    files = []
    for split in SPLITS:
        targets = {crop: out / crop / file_name(split) for crop in crops}
        if all(path.is_file() for path in targets.values()):
            files += [str(p) for p in targets.values()]
            continue
        names = class_names(refs[split])
        features, jobs = split_features(model, params, dataset, refs[split], preprocessing, device, crops, progress,
                                        desc=f"embed {split}")
        keys = [make_key(names[c], f"{i:05d}", prefix=n) for n, (_, _, c, i) in enumerate(jobs)]
        split_labels = np.array([c for _, _, c, _ in jobs], dtype=np.int64)
        for crop, embeddings in features.items():
            files.append(str(write_leo_pickles(out / crop, split, embeddings, split_labels, keys)))
    return files


def write_summary(out: Path, dim: int, pretrain_steps: int, embedded_step: int, val_metric: float | None,
                  options: dict, refs: dict[str, list[ImageClass]]) -> None:
    """OUT/embed.json: what made the embedding files (`embedding_weights` reads it)."""
    summary = {"dim": dim, "pretrain_steps": pretrain_steps, "embedded_step": embedded_step, "val_metric": val_metric,
               "options": options, "classes": {s: len(refs[s]) for s in SPLITS},
               "crops": [c for c in CROPS if all((out / c / file_name(s)).is_file() for s in SPLITS)]}
    write_text(out / "embed.json", json.dumps(summary, indent=1))


def embedding_weights(folder: str | Path) -> Path | None:
    """The checkpoint of the backbone weights that made the embeddings in `folder`
    (`fewshot embed`'s --out, or a copy of its files): the one of pretrain-best.pt and
    pretrain.pt whose step embed.json names (`embedded_step`); pretrain.pt for a folder from
    before that record; None when the weights that made them are not there."""
    folder = Path(folder)
    try:
        embedded = json.loads((folder / "embed.json").read_text()).get("embedded_step")
    except (OSError, ValueError, AttributeError):  # no embed.json, or not one fewshot wrote
        embedded = None
    if embedded is None:
        return folder / "pretrain.pt" if (folder / "pretrain.pt").is_file() else None
    for name in ("pretrain-best.pt", "pretrain.pt"):
        if (folder / name).is_file() and checkpoint.load(folder / name).get("step") == embedded:
            return folder / name
    return None


def leo_presets(dataset: str, dim: int) -> dict:
    """The LEO presets made for `fewshot embed`'s files (those with an `image_preset`) that fit
    embeddings of `dim` features made from `dataset` images: {"presets": names, "set_dim":
    whether they need `embedding_dim` set to `dim`}. Best first: the presets of that dimension
    and an image preset on that dataset, then of that dimension, then of that dataset."""
    from .config import load_preset, preset_names
    made_here = [(name, load_preset(name)) for name in preset_names()]
    made_here = [(name, config) for name, config in made_here
                 if config.dataset == "embeddings" and config.image_preset is not None]

    def fit(config):
        return config.embedding_dim == dim, load_preset(config.image_preset).dataset == dataset

    best = max((fit(config) for _, config in made_here), default=None)
    return {"presets": [name for name, config in made_here if fit(config) == best],
            "set_dim": best is not None and not best[0]}


def embed_from(target: str | Path, out: str | Path, data_spec: str | None = None, crops: tuple[str, ...] = CROPS,
               device: str | None = "cpu", progress: bool = True) -> dict:
    """The embedding files of a trained model of embeddings' own image backbone (a shipped
    LEO model's, by name, or a LEO run's; `inputs.backbone_of`), with no pretraining:
    every image of `data_spec` (default: the data the backbone was pretrained on) through
    the split and conversion it was pretrained with. OUT then holds what `fewshot embed`
    writes with those weights (the files, the backbone as pretrain-best.pt, embed.json),
    so that a LEO run trained on them reads images too. Returns as `embed` does."""
    from .config import complete
    from .inputs import backbone_network, backbone_of, trained_on_embeddings
    check_crops(crops)
    state = checkpoint.load(target, run=True)
    if not trained_on_embeddings(state):
        raise FewshotError(f"{target} is a model of images ({state['config'].preset}), with no image backbone to "
                           f"embed with; give a shipped LEO model (`fewshot models`) or a LEO run")
    backbone = backbone_of(state)
    pretrained_config = complete(backbone["config"])
    config = pretrained_config if data_spec is None else pretrained_config.unchecked_replace(data=data_spec)
    out = Path(out)
    check_out(out)
    device = choose_device(device)[0]
    dataset, refs = data.load(config, progress)
    made = data.preprocessing(dataset, config)
    if any(made[key] != backbone["preprocessing"][key] for key in ("dataset", "invert", "size", "channels", "mean",
                                                                    "std")):
        raise FewshotError(f"{config.data} is not the image dataset the backbone of {target} was pretrained on (its "
                           f"kind, side or pixel statistics differ); give --data the dataset it names "
                           f"({pretrained_config.data})")
    out.mkdir(parents=True, exist_ok=True)
    model = backbone_network(backbone, device)
    files = write_embeddings(model, dataset, refs, backbone["preprocessing"], out, crops, device, progress)
    options = {**backbone_options(config, dataset), "from_model": str(target)}
    checkpoint.save(out / "pretrain-best.pt", model=backbone["model"], step=backbone["step"], options=options,
                    config=config)
    write_summary(out, model.features_size, backbone["step"], backbone["step"], None, options, refs)
    return {"out": str(out), "steps": backbone["step"], "stopped": False, "dim": model.features_size,
            "files": files, "embedded_step": backbone["step"],
            "leo_presets": leo_presets(config.dataset, model.features_size)}
