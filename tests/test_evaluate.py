"""`fewshot eval` (evaluate.evaluate_checkpoint): the inner steps asked of a run are checked
as a preset's are."""
import pytest
import torch

from fewshot import algorithms, checkpoint, evaluate
from fewshot.errors import FewshotError

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
    assert "0 inner steps at lr none (no inner loop)" in evaluate.describe(result)
    for asked in ({"steps": 10}, {"at_steps": [0, 1]}):
        with pytest.raises(FewshotError, match="would be ignored: only algorithms anil, leo, maml, mamlpp, metasgd, "
                                               "reptile read it, and this algorithm is protonet"):
            evaluate.evaluate_checkpoint(run, tasks=2, progress=False, **asked)
