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


def test_shifted_moves_each_copy_by_whole_pixels_and_repeats_the_border():
    images = torch.arange(2 * 1 * 5 * 6, dtype=torch.float64).view(2, 1, 5, 6)
    assert torch.equal(evaluate.shifted(images, 0), images[None])
    copies = evaluate.shifted(images, 1)
    assert copies.shape == (9, 2, 1, 5, 6) and torch.equal(copies[0], images)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for copy, (dy, dx) in zip(copies[1:], offsets):
        for row in range(5):
            for column in range(6):  # the pixel it shows: its own position moved, held inside the image
                source = min(max(row + dy, 0), 4), min(max(column + dx, 0), 5)
                assert torch.equal(copy[:, 0, row, column], images[:, 0, source[0], source[1]])
    assert evaluate.shifted(images, 2).shape[0] == 25


def test_a_shifted_protonet_classifies_by_the_mean_embedding_of_the_copies(tmp_path, data):
    """With eval_shift the prototype is the mean embedding of the support images' copies and a
    query is compared by the mean embedding of its own: the same probabilities by hand."""
    run = saved_run(tmp_path, data, algorithm="protonet", head=False, batch_norm="inductive")
    algorithm = evaluate.load_algorithm(checkpoint.load(run)).eval()
    torch.manual_seed(1)
    support_x, support_y, query_x = torch.rand(6, 1, 16, 16), torch.arange(3).repeat(2), torch.rand(4, 1, 16, 16)
    outputs = evaluate.meta_test_outputs(algorithm, support_x, support_y, query_x, [0], shift=1)[0]
    with torch.no_grad():
        embed = lambda x: algorithm.model(evaluate.shifted(x, 1).flatten(0, 1)).view(9, len(x), -1).mean(0)  # noqa: E731
        support, query = embed(support_x), embed(query_x)
    prototypes = torch.stack([support[support_y == c].mean(0) for c in range(3)])
    by_hand = -torch.cdist(query, prototypes).pow(2)
    torch.testing.assert_close(outputs.softmax(1), by_hand.softmax(1))
    unshifted = evaluate.meta_test_outputs(algorithm, support_x, support_y, query_x, [0])[0]
    assert not torch.allclose(outputs, unshifted)  # the copies change the answer


def test_eval_shift_is_asked_of_a_run_and_recorded(tmp_path, data):
    run = saved_run(tmp_path, data, algorithm="protonet", head=False)
    plain = evaluate.evaluate_checkpoint(run, tasks=3, progress=False)
    shifted = evaluate.evaluate_checkpoint(run, tasks=3, progress=False, shift=1)
    assert (plain["shift"], shifted["shift"]) == (0, 1)
    assert "shifted by up to 1 pixel each way (9 copies" in evaluate.describe(shifted)
    assert "shifted" not in evaluate.describe(plain)
    with pytest.raises(FewshotError, match="--shift must be"):
        evaluate.evaluate_checkpoint(run, tasks=3, progress=False, shift=-1)
    with pytest.raises(FewshotError, match="eval_shift"):
        evaluate.evaluate_checkpoint(run, tasks=3, progress=False, shift=9)


def test_validation_during_training_uses_the_runs_eval_shift(tmp_path, data):
    """A run with eval_shift validates as `fewshot eval --classes val` scores it, shifts and all."""
    config = tiny_config(data=data, algorithm="protonet", head=False, inner_steps=5, inner_lr=0.4, eval_inner_steps=10,
                         eval_shift=1, steps=2, val_every=2,
                         val_tasks=20)
    train(config, tmp_path / "run", progress=False)
    validated = [row for row in fewshot.runs.read_metrics(tmp_path / "run") if "val_metric" in row][-1]
    again = evaluate.evaluate_checkpoint(tmp_path / "run" / "last.pt", tasks=20, split="val", progress=False)
    assert again["shift"] == 1 and again["mean"] == validated["val_metric"]
    unshifted = evaluate.evaluate_checkpoint(tmp_path / "run" / "last.pt", tasks=20, split="val", progress=False,
                                             shift=0)
    assert unshifted["mean"] != validated["val_metric"]
