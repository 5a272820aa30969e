"""`fewshot eval` (evaluate.evaluate_checkpoint): the inner steps asked of a run are checked
as a preset's are, and a run is evaluated in the arithmetic it was validated in."""
import pytest
import torch

import fewshot

from fewshot import algorithms, checkpoint, evaluate
from fewshot.errors import FewshotError
from fewshot.train import train

from helpers import configure_as_on_cuda, tagged_dataset, tf32_flags, tiny_config


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
    with pytest.raises(FewshotError, match="protonet adapts with no inner loop at meta-test, so an inner learning "
                                           "rate .0.1. would be ignored"):
        evaluate.evaluate_checkpoint(run, tasks=2, progress=False, lr=0.1)
    learner = fewshot.load(run)
    task_x = torch.rand(6, 1, 16, 16)
    with pytest.raises(FewshotError, match="would be ignored"):
        learner.adapt(task_x[:3], torch.arange(3), lr=0.1)
    learner.adapt(task_x[:3], torch.arange(3))  # no rate asked: adapts


@pytest.mark.parametrize("value,arithmetic", [("fp32", (False, False, False)), ("tf32", (True, True, False)),
                                              ("bf16", (False, False, False))])
def test_eval_runs_in_the_arithmetic_the_run_validated_in(tmp_path, data, monkeypatch, value, arithmetic):
    """Validation runs between meta-steps under precision.configure's flags and outside
    autocast; `fewshot eval` runs the same way, and leaves the flags as it found them.
    Seen: the TF32 flags and whether autocast is on, each time MAML predicts."""
    from fewshot.algorithms.maml import MAML
    seen, real_predict = [], MAML.predict

    def spying_predict(self, adapted, x):
        seen.append((*tf32_flags(), torch.is_autocast_enabled("cpu")))
        return real_predict(self, adapted, x)

    monkeypatch.setattr(MAML, "predict", spying_predict)
    before = (value != "tf32",) * 2
    with configure_as_on_cuda(monkeypatch, before):
        train(tiny_config(data=data, steps=2, val_every=2, precision=value), tmp_path / "run", progress=False)
        validation = set(seen)
        seen.clear()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before  # train leaves its own
        evaluate.evaluate_checkpoint(tmp_path / "run", tasks=2, progress=False)
        assert validation == set(seen) == {arithmetic}
        assert tf32_flags() == before  # a library call: the caller's process is left as it was
