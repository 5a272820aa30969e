"""Small synthetic datasets, configs and CLI helpers shared by the tests."""
import contextlib
import importlib.util
from pathlib import Path

import numpy as np

from fewshot.cli import main
from fewshot.config import DEFAULTS, Config
from fewshot.data.images import ImageClass, write_dataset


def tagged_dataset(folder, classes=12, per_class=8, size=16, group_split=True):
    """A prepared dataset whose pixel (0, 0) is the class and (0, 1) the image index
    within the class, so tests can tell exactly which images a task holds."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(classes * per_class, 1, size, size), dtype=np.uint8)
    refs = []
    for c in range(classes):
        images[c * per_class:(c + 1) * per_class, 0, 0, 0] = c
        images[c * per_class:(c + 1) * per_class, 0, 0, 1] = np.arange(per_class)
        group = "background" if (not group_split or c < classes // 2) else "evaluation"
        refs.append(ImageClass(f"a/character{c + 1:02d}", group, c * per_class, per_class, {"char_id": c + 1}))
    write_dataset(folder, images, refs, {"dataset": "omniglot", "invert": False, "channels": 1})
    return folder


def tiny_config(**overrides) -> Config:
    """A small config (3-way, 4 filters, 16 pixels, 4 steps), unchecked: tests give it
    combinations validate() would refuse."""
    values = dict(DEFAULTS, ways=3, shots=1, query=2, filters=4, image_size=16, meta_batch=2, inner_steps=1,
                  inner_lr=0.1, eval_inner_steps=2, steps=4, log_every=2, val_every=2, val_tasks=3,
                  save_every=2, eval_tasks=5, preset="tiny")
    return Config(**{**values, **overrides})


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fewshot: error: "), err
    assert "Traceback" not in err
    return lines[0]


def central_difference(objective, tensor, flat, eps=1e-6):
    """d objective() / d tensor.view(-1)[flat] by central differences, entry restored after.
    `objective` returns a list of terms (floats); the answer is one derivative per term, so
    a test can also show that each term matters (dropping it would fail the check)."""
    import torch
    entry = tensor.view(-1)
    original = entry[flat].item()
    values = []
    for value in (original + eps, original - eps):
        with torch.no_grad():
            entry[flat] = value
        values.append([float(term) for term in objective()])
    with torch.no_grad():
        entry[flat] = original
    return [(plus - minus) / (2 * eps) for plus, minus in zip(*values)]


def sampled_finite_differences(objective, named_tensors, per_tensor=4, seed=1, eps=1e-6):
    """[(name, flat index, per-term derivatives)] at `per_tensor` random entries of each tensor
    (every entry of a tensor with no more than `per_tensor` entries)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for name, tensor in named_tensors.items():
        if tensor.numel() <= per_tensor:
            entries = range(tensor.numel())
        else:
            entries = torch.randperm(tensor.numel(), generator=generator)[:per_tensor].tolist()
        rows += [(name, flat, central_difference(objective, tensor, flat, eps)) for flat in entries]
    return rows


def gradient_mismatches(rows, analytic, rtol=1e-5, atol=1e-7):
    """The rows whose summed finite-difference derivative differs from `analytic[name]` at that entry."""
    bad = []
    for name, flat, terms in rows:
        numeric, exact = sum(terms), analytic[name].reshape(-1)[flat].item()
        if abs(numeric - exact) > atol + rtol * abs(numeric):
            bad.append((name, flat, numeric, exact))
    return bad


def terms_that_matter(rows, rtol=1e-5, atol=1e-7):
    """For each term, whether leaving it out of the objective would move some checked derivative
    by more than 100 times the tolerance: the check would then fail, so it covers that term."""
    count = len(rows[0][2])
    return [any(abs(terms[j]) > 100 * (atol + rtol * abs(sum(terms))) for _, _, terms in rows)
            for j in range(count)]


def scores_by_hand(evaluated, count):
    """The per-task accuracies `evaluate_checkpoint` should report, recomputed here: the same
    seeded test tasks, adapt on the support set, argmax over the query logits, fraction right."""
    from fewshot import checkpoint, data
    from fewshot.config import eval_query, eval_ways
    from fewshot.evaluate import load_algorithm
    state = checkpoint.load(evaluated["checkpoint"])
    config = state["config"]
    algorithm = load_algorithm(state).eval()
    dataset, refs = data.load(config, False)
    sampler = data.sampler(config, dataset, refs, evaluated["split"], evaluated["seed"], query=eval_query(config),
                           ways=eval_ways(config))
    scores = []
    for index in range(count):
        task = sampler.batch(index, 1)[0]
        logits = algorithm.predict(algorithm.adapt(task.support_x, task.support_y), task.query_x)
        assert logits.shape == (len(task.query_y), eval_ways(config))
        scores.append((logits.argmax(1) == task.query_y).double().mean().item())
    return scores


def tf32_flags():
    import torch
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def configure_as_on_cuda(monkeypatch, flags):
    """precision.configure setting the TF32 flags as it does on CUDA (the CPU has no TF32, so
    there it sets none): the test sees which arithmetic a command asks for. The flags start
    at `flags` and are the process's own again afterwards."""
    import torch
    from fewshot import precision
    real = precision.configure
    monkeypatch.setattr(precision, "configure", lambda value, device: real(value, torch.device("cuda")))
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


ROOT = Path(__file__).resolve().parents[1]


def script(name):
    """scripts/NAME.py as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def shipping_workplace(base):
    """Where a test trains and ships a model: FEWSHOT_HOME = base/home holding a tagged
    dataset named `tagged` (80 classes), the shipped models' folder base/models, the
    working folder base; yields FEWSHOT_HOME."""
    import pytest
    from fewshot import zoo
    home = base / "home"
    tagged_dataset(home / "tagged", classes=80)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEWSHOT_HOME", str(home))
        patch.setenv(zoo.FOLDER_VARIABLE, str(base / "models"))
        patch.chdir(base)
        yield home
