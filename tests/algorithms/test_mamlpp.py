"""MAML++ as its authors' code runs it (AntreasAntoniou/HowToTrainYourMAMLPytorch at 86964701,
few_shot_learning_system.py, inner_loop_optimizers.py, meta_neural_network_architectures.py,
experiment_config/*.json): the batch-norm row of each pass, the per-tensor learned step sizes,
schedules that change per epoch, and presets that are one named config file each.
benchmarks/mamlpp_reference.py compares a whole meta-step with the authors' code itself."""
import warnings
from pathlib import Path

import pytest
import torch

from fewshot import algorithms
from fewshot.config import load_preset
from fewshot.errors import FewshotError
from fewshot.optim import make_optimizer, set_schedule_length

from algorithms.test_maml import make_tasks
from helpers import tiny_config

PRESETS = Path(__file__).parents[2] / "src" / "fewshot" / "presets"


def build(**overrides):
    torch.manual_seed(0)
    values = dict(algorithm="mamlpp", per_step_bn=True, inner_steps=3, eval_inner_steps=3, msl_epochs=2,
                  steps_per_epoch=10)
    return algorithms.build(tiny_config(**{**values, **overrides})).double()


def record_bn_steps(algorithm, monkeypatch):
    """The (images per task, bn_step) of every forward the algorithm runs."""
    calls = []
    model = algorithm.model
    original = model.functional_forward

    def spy(params, x, bn_training=True, tasks=False, **options):
        calls.append((x.shape[1] if tasks else len(x), options.get("bn_step", 0)))
        return original(params, x, bn_training, tasks=tasks, **options)

    monkeypatch.setattr(model, "functional_forward", spy)
    return calls


def test_the_query_pass_after_inner_step_k_uses_the_support_passs_batch_norm_row_k(monkeypatch):
    # the authors' forward: net_forward(support, num_step=k), update, net_forward(target, num_step=k)
    algorithm = build(batch_tasks=False)
    task = make_tasks(1, shots=2, query=3)[0]  # 6 support images, 9 query images
    calls = record_bn_steps(algorithm, monkeypatch)
    algorithm.meta_gradient([task], step=0)  # epoch 0: multi-step loss, a query pass after every step
    assert calls == [(6, 0), (9, 0), (6, 1), (9, 1), (6, 2), (9, 2)]
    # one row per inner step (number_of_training_steps_per_iter rows), each of them used
    assert algorithm.model.blocks[0].norm.weight.shape == (3, 4)
    # after the multi-step loss, only the last step's query pass: row 2
    calls.clear()
    algorithm.meta_gradient([task], step=25)
    assert [step for size, step in calls if size == 9] == [2]


def test_the_batched_pass_uses_the_same_rows(monkeypatch):
    algorithm = build(batch_tasks=True)
    calls = record_bn_steps(algorithm, monkeypatch)
    algorithm.meta_gradient(make_tasks(2, shots=2, query=3), step=0)
    assert calls == [(6, 0), (9, 0), (6, 1), (9, 1), (6, 2), (9, 2)]


def test_meta_test_predicts_with_the_row_of_the_last_inner_step(monkeypatch):
    algorithm = build()
    task = make_tasks(1, shots=2, query=3)[0]
    adapted = algorithm.adapt(task.support_x, task.support_y)
    calls = record_bn_steps(algorithm, monkeypatch)
    algorithm.predict(adapted, task.query_x)
    assert calls == [(9, 2)]  # 3 steps: the target pass after step 2, as in training
    calls.clear()
    algorithm.predict(algorithm.adapt(task.support_x, task.support_y, steps=0), task.query_x)
    assert calls == [(9, 0)]


def test_each_parameter_tensor_has_its_own_step_sizes_and_batch_norm_has_none():
    algorithm = build()
    adapted = [n for n, role in algorithm.parameter_roles.items() if role != "batch_norm"]
    assert sorted(algorithm.step_sizes) == sorted(n.replace(".", "/") for n in adapted)
    # inner_steps + 1 rates each, as LSLRGradientDescentLearningRule's total_num_inner_loop_steps + 1
    assert {tuple(rates.shape) for rates in algorithm.step_sizes.values()} == {(4,)}
    # a layer's weight and bias step independently: a zero rate for the head's weight alone
    # leaves the weight where it was and moves the bias
    with torch.no_grad():
        algorithm.step_sizes["head/weight"].zero_()
    task = make_tasks(1)[0]
    params = algorithm.adapt(task.support_x, task.support_y)["params"]
    assert torch.equal(params["head.weight"], algorithm.model.head.weight)
    assert not torch.equal(params["head.bias"], algorithm.model.head.bias)


def test_a_checkpoint_with_per_layer_step_sizes_is_refused_in_one_line_naming_why():
    algorithm = build()
    old = {k: v for k, v in algorithm.state_dict().items() if not k.startswith("step_sizes.")}
    old.update({"step_sizes.head": torch.zeros(3), "step_sizes.blocks/0/conv": torch.zeros(3)})
    with pytest.raises(FewshotError, match="one learned step size per layer.*train it again") as raised:
        build().load_state_dict(old)
    assert "\n" not in str(raised.value)
    build().load_state_dict(algorithm.state_dict())  # today's checkpoints load


def test_the_multi_step_loss_and_the_derivative_order_change_at_epoch_boundaries_only():
    algorithm = build(first_order_epochs=1)  # 10 meta-steps per epoch, msl over 2 epochs
    # the authors: current_epoch = int(iteration / total_iter_per_epoch)
    assert [algorithm.loss_weights(s) for s in (0, 9)] == [pytest.approx([1 / 3] * 3)] * 2
    assert algorithm.loss_weights(10) == algorithm.loss_weights(19) == pytest.approx([1 / 6, 1 / 6, 2 / 3])
    assert algorithm.loss_weights(20) == [0.0, 0.0, 1.0]
    # use_second_order = epoch > first_order_to_second_order_epoch, which is first_order_epochs - 1
    assert [algorithm.second_order(s) for s in (0, 9, 10)] == [False, False, True]
    assert build(first_order_epochs=0).second_order(0)  # the presets' -1: second order from the start


def learning_rates(algorithm, steps):
    optimizer, schedule = make_optimizer(algorithm, algorithm.config)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def authors_cosine(base, floor, epochs, epoch):
    """The authors' schedule: CosineAnnealingLR(T_max=total_epochs) given epoch=int(epoch) before each
    iteration (run_train_iter: self.scheduler.step(epoch=epoch)), i.e. torch's closed form."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=floor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates step(epoch), which the authors call
        schedule.step(epoch=epoch)
    return optimizer.param_groups[0]["lr"]


def test_the_cosine_schedule_changes_once_per_epoch_as_the_authors_steps_it():
    algorithm = build(lr_schedule="cosine", meta_lr=0.1, min_meta_lr=0.01, steps=40)  # 4 epochs of 10 steps
    seen = learning_rates(algorithm, 40)
    expected = [authors_cosine(0.1, 0.01, 4, step // 10) for step in range(40)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    assert seen[:10] == [0.1] * 10 and len(set(seen)) == 4
    # MAML keeps a new rate every step
    maml = algorithms.build(tiny_config(lr_schedule="cosine", meta_lr=0.1, min_meta_lr=0.01, steps=40))
    assert len(set(learning_rates(maml, 40))) == 40


def test_a_resumed_per_epoch_cosine_extended_follows_the_longer_schedule():
    algorithm = build(lr_schedule="cosine", meta_lr=0.1, min_meta_lr=0.01, steps=50)  # 5 epochs of 10 steps
    optimizer, schedule = make_optimizer(algorithm, algorithm.config)
    for _ in range(45):
        optimizer.step()
        schedule.step()
    saved = schedule.state_dict()
    optimizer, schedule = make_optimizer(algorithm, algorithm.config)
    schedule.load_state_dict(saved)
    set_schedule_length(optimizer, schedule, 60, 45)  # 6 epochs now: step 45 is in epoch 4 of 6
    resumed = []
    for _ in range(15):
        resumed.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert resumed == pytest.approx([authors_cosine(0.1, 0.01, 6, step // 10) for step in range(45, 60)],
                                    rel=1e-12, abs=0)


# Each preset is one of the authors' experiment_config files, whole: the file's values, as our keys.
AUTHORS_FILES = {
    "mamlpp-omniglot-5w1s": ("omniglot_maml++-omniglot_1_8_0.1_64_5_0.json", dict(
        image_size=28, channels=1, eval_tasks=600, val_tasks=600, val_every=500, ways=5, shots=1, query=1,
        filters=64, downsample="maxpool", leaky_relu=True, per_step_bn=True, inner_steps=5,
        inner_lr=0.1, eval_inner_steps=5, msl_epochs=10, first_order_epochs=0, first_order=False,
        steps_per_epoch=500, meta_batch=8, meta_lr=0.001, meta_optimizer="adam", lr_schedule="cosine",
        min_meta_lr=1e-5, steps=50000, grad_clip_value=None, batch_norm="transductive")),
    "mamlpp-miniimagenet-5w1s": ("mini-imagenet_maml++-mini-imagenet_1_2_0.01_48_5_0.json", dict(
        image_size=84, channels=3, eval_tasks=600, val_tasks=600, val_every=500, ways=5, shots=1, query=15,
        filters=48, downsample="maxpool", leaky_relu=True, per_step_bn=True, inner_steps=5,
        inner_lr=0.01, eval_inner_steps=5, msl_epochs=15, first_order_epochs=0, first_order=False,
        steps_per_epoch=500, meta_batch=2, meta_lr=0.001, meta_optimizer="adam", lr_schedule="cosine",
        min_meta_lr=0.001, steps=50000, grad_clip_value=10, batch_norm="transductive")),
}
AUTHORS_FILES["mamlpp-miniimagenet-5w5s"] = (
    "mini-imagenet_maml++-mini-imagenet_5_2_0.01_48_5_0.json",
    {**AUTHORS_FILES["mamlpp-miniimagenet-5w1s"][1], "shots": 5})
AUTHORS_FILES["mamlpp-omniglot-20w1s"] = (
    "omniglot_maml++-omniglot_1_8_0.1_64_20_0.json", {**AUTHORS_FILES["mamlpp-omniglot-5w1s"][1], "ways": 20})
AUTHORS_FILES["mamlpp-omniglot-20w5s"] = (
    "omniglot_maml++-omniglot_5_8_0.1_64_20_0.json",
    {**AUTHORS_FILES["mamlpp-omniglot-5w1s"][1], "ways": 20, "shots": 5})


@pytest.mark.parametrize("preset", sorted(AUTHORS_FILES))
def test_each_preset_is_its_named_config_file_of_the_authors(preset):
    source, values = AUTHORS_FILES[preset]
    config = load_preset(preset)
    assert {key: getattr(config, key) for key in values} == values
    assert config.algorithm == "mamlpp" and config.eval_query is None  # num_target_samples at test too
    assert f"experiment_config/{source}" in (PRESETS / f"{preset}.yaml").read_text()

