"""`fewshot eval` (evaluate.evaluate_checkpoint): the inner steps asked of a run are checked
as a preset's are, and a run is evaluated in the arithmetic it was validated in."""
import pytest
import torch

from fewshot import algorithms, checkpoint, evaluate, precision
from fewshot.errors import FewshotError
from fewshot.train import train

from helpers import tagged_dataset, tiny_config


@pytest.fixture
def data(tmp_path):
    return str(tagged_dataset(tmp_path / "data", classes=80))


def saved_run(folder, data, **overrides):
    """A checkpoint of a freshly built algorithm (no training), with its config."""
    config = tiny_config(data=data, **overrides)
    torch.manual_seed(0)
    checkpoint.save(folder / "last.pt", config=config, algorithm=algorithms.build(config).state_dict(), step=0)
    return folder / "last.pt"


def test_eval_refuses_more_inner_steps_than_mamlpp_learned_rates_for(tmp_path, data):
    """The same limit as a preset's eval_inner_steps (config.py), asked of a run instead."""
    run = saved_run(tmp_path, data, algorithm="mamlpp", per_step_bn=True, inner_steps=2, eval_inner_steps=2)
    with pytest.raises(FewshotError, match=r"eval_inner_steps \(3\) > inner_steps \(2\) would adapt with untrained "
                                           r"ones; ask this run for at most 2 inner steps$"):
        evaluate.evaluate_checkpoint(run, tasks=2, steps=3, progress=False)
    with pytest.raises(FewshotError, match=r"eval_at_steps \(\[0, 4\]\) > inner_steps \(2\)"):
        evaluate.evaluate_checkpoint(run, tasks=2, at_steps=[0, 4], progress=False)
    result = evaluate.evaluate_checkpoint(run, tasks=2, steps=1, at_steps=[0, 2], progress=False)
    assert result["inner_steps"] == 1 and sorted(result["by_steps"]) == ["0", "1", "2"]


def test_protonet_runs_take_no_inner_steps_and_are_asked_for_none(tmp_path, data):
    run = saved_run(tmp_path, data, algorithm="protonet", head=False, inner_steps=5, inner_lr=0.4,
                    eval_inner_steps=10)
    result = evaluate.evaluate_checkpoint(run, tasks=2, progress=False)
    assert result["inner_steps"] == 0 and list(result["by_steps"]) == ["0"]
    assert "no inner loop" in evaluate.describe(result)
    for asked in ({"steps": 10}, {"at_steps": [0, 1]}):
        with pytest.raises(FewshotError, match="would be ignored: only algorithms anil, leo, maml, mamlpp, metasgd, "
                                               "reptile read it, and this algorithm is protonet"):
            evaluate.evaluate_checkpoint(run, tasks=2, progress=False, **asked)


def flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def arithmetic_seen(monkeypatch):
    """The TF32 flags and whether autocast is on, each time MAML predicts (validation and
    evaluation), with configure() setting the flags as on CUDA: the CPU has no TF32, so
    there it sets none, and this shows which arithmetic each command asks for."""
    from fewshot.algorithms.maml import MAML
    seen = []
    real_predict, real_configure = MAML.predict, precision.configure

    def spying_predict(self, adapted, x):
        seen.append((*flags(), torch.is_autocast_enabled("cpu")))
        return real_predict(self, adapted, x)

    def as_on_cuda(value, device):
        real_configure(value, torch.device("cuda"))

    monkeypatch.setattr(MAML, "predict", spying_predict)
    monkeypatch.setattr(precision, "configure", as_on_cuda)
    saved = flags()
    yield seen
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("value,arithmetic", [("fp32", (False, False, False)), ("tf32", (True, True, False)),
                                              ("bf16", (False, False, False))])
def test_eval_runs_in_the_arithmetic_the_run_validated_in(tmp_path, data, arithmetic_seen, value, arithmetic):
    """Validation runs between meta-steps under precision.configure's flags and outside
    autocast; `fewshot eval` runs the same way, and leaves the flags as it found them."""
    train(tiny_config(data=data, steps=2, val_every=2, precision=value), tmp_path / "run", progress=False)
    validation = set(arithmetic_seen)
    arithmetic_seen.clear()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before = (value != "tf32",) * 2
    evaluate.evaluate_checkpoint(tmp_path / "run", tasks=2, progress=False)
    assert validation == set(arithmetic_seen) == {arithmetic}
    assert flags() == before  # a library call: the caller's process is left as it was
