"""Small synthetic datasets, configs and CLI helpers shared by the tests."""
import numpy as np

from fewshot.cli import main
from fewshot.config import DEFAULTS
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


def tiny_config(**overrides):
    config = dict(DEFAULTS)
    config.update(ways=3, shots=1, query=2, filters=4, image_size=16, meta_batch=2, inner_steps=1,
                  inner_lr=0.1, eval_inner_steps=2, steps=4, log_every=2, val_every=2, val_tasks=3,
                  save_every=2, eval_tasks=5, preset="tiny")
    config.update(overrides)
    return config


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fewshot: error: "), err
    assert "Traceback" not in err
    return lines[0]
