"""`fewshot eval` (evaluate.evaluate_checkpoint): the inner steps asked of a run are checked
as a preset's are, and a run is evaluated in the arithmetic it was validated in."""
import json

import pytest
import torch

import fewshot

from fewshot import algorithms, checkpoint, evaluate
from fewshot.errors import FewshotError
from fewshot.train import train

from helpers import configure_as_on_cuda, one_error_line, run, tagged_dataset, tf32_flags, tiny_config


@pytest.fixture
def data(tmp_path):
    return str(tagged_dataset(tmp_path / "data", classes=80))


def saved_run(folder, data, seed=0, **overrides):
    """A checkpoint of a freshly built algorithm (no training), with its config."""
    config = tiny_config(data=data, **overrides)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
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


def test_an_ensemble_averages_its_members_log_probabilities_each_adapting_its_own_way(tmp_path, data):
    """A ProtoNet (no inner loop) and a MAML network (its own 2 meta-test steps) together:
    each query's log-probabilities averaged; for two ProtoNets that ranks the classes as
    the distance in their embeddings put side by side does."""
    protonet = evaluate.load_algorithm(checkpoint.load(
        saved_run(tmp_path / "p", data, algorithm="protonet", head=False, batch_norm="inductive"))).eval()
    maml = evaluate.load_algorithm(checkpoint.load(saved_run(tmp_path / "m", data, seed=1))).eval()
    torch.manual_seed(2)
    support_x, support_y, query_x = torch.rand(3, 1, 16, 16), torch.arange(3), torch.rand(6, 1, 16, 16)
    together = evaluate.ensemble_outputs([protonet, maml], support_x, support_y, query_x)
    alone = [evaluate.meta_test_outputs(member, support_x, support_y, query_x, [count])[count]
             for member, count in ((protonet, 0), (maml, 2))]
    torch.testing.assert_close(together, (alone[0].log_softmax(1) + alone[1].log_softmax(1)) / 2)
    assert not torch.allclose(together.softmax(1), alone[0].softmax(1))
    asked = evaluate.ensemble_outputs([protonet, maml], support_x, support_y, query_x, steps=1)
    torch.testing.assert_close(asked, (alone[0].log_softmax(1) + evaluate.meta_test_outputs(
        maml, support_x, support_y, query_x, [1])[1].log_softmax(1)) / 2)

    other = evaluate.load_algorithm(checkpoint.load(
        saved_run(tmp_path / "q", data, seed=3, algorithm="protonet", head=False, batch_norm="inductive"))).eval()
    with torch.no_grad():
        side_by_side = lambda x: torch.cat([protonet.model(x), other.model(x)], 1)  # noqa: E731
        distances = torch.cdist(side_by_side(query_x), side_by_side(support_x))
    pair = evaluate.ensemble_outputs([protonet, other], support_x, support_y, query_x)
    assert torch.equal(pair.argmax(1), distances.argmin(1))


def test_eval_of_several_runs_scores_them_together_on_the_first_runs_tasks(tmp_path, data, capsys):
    first = saved_run(tmp_path / "a", data, algorithm="protonet", head=False, batch_norm="inductive")
    second = saved_run(tmp_path / "b", data, seed=1, algorithm="protonet", head=False, batch_norm="inductive")
    alone = evaluate.evaluate_checkpoint(first, tasks=6, progress=False)
    with_itself = evaluate.evaluate_checkpoint(first, tasks=6, progress=False, ensemble=[first])
    assert with_itself["scores"] == alone["scores"]  # the same probabilities twice: the same answers
    together = evaluate.evaluate_checkpoint(first, tasks=6, progress=False, ensemble=[second])
    second_alone = evaluate.evaluate_checkpoint(second, tasks=6, progress=False)
    assert together["scores"] not in (alone["scores"], second_alone["scores"])
    assert [m["checkpoint"] for m in together["members"]] == [str(first), str(second)]
    assert "members" not in alone and "ensemble" not in evaluate.describe(alone)
    text = evaluate.describe(together)
    assert "an ensemble of 2 runs" in text and str(second) in text

    code, out, err = run(capsys, "eval", first, second, "--tasks", 6, "--json", "--threads", 1)
    assert code == 0 and json.loads(out)["mean"] == together["mean"]


def test_an_ensemble_of_runs_that_read_different_tasks_is_refused_in_one_line(tmp_path, data, capsys):
    first = saved_run(tmp_path / "a", data, algorithm="protonet", head=False)
    larger = saved_run(tmp_path / "b", data, algorithm="protonet", head=False, image_size=20)
    other_split = saved_run(tmp_path / "c", data, algorithm="protonet", head=False, split="other")
    for other, words in ((larger, "image_size 20"), (other_split, "split 'other'")):
        code, out, err = run(capsys, "eval", first, other, "--tasks", 2)
        assert code == 2 and words in one_error_line(err) and "same data, split and image size" in err
    five_way = saved_run(tmp_path / "d", data, ways=5)
    code, out, err = run(capsys, "eval", first, five_way, "--tasks", 2)
    assert code == 2 and "fixed 5-way output layer, and the tasks of" in one_error_line(err) and "3-way" in err
    with pytest.raises(FewshotError, match="--at-steps reports one run"):
        evaluate.evaluate_checkpoint(saved_run(tmp_path / "m", data), tasks=2, progress=False, at_steps=[0],
                                     ensemble=[saved_run(tmp_path / "n", data, seed=1)])
