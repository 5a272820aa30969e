"""LEO (Rusu et al. 2019): its pieces against their definitions, its two inner loops, the
meta-gradient reaching the learned rates, and training and evaluation on small
embedding files written here."""
import math
from dataclasses import replace

import pytest
import torch

from fewshot import algorithms, checkpoint
from fewshot.algorithms.leo import Noise, gaussian_log_prob, kl_divergence, orthogonality, split_gaussian
from fewshot.data.episodes import Task
from fewshot.errors import FewshotError
from fewshot.evaluate import evaluate_checkpoint
from fewshot.train import train

from data.test_embeddings import write_synthetic
from algorithms.test_gradients import leo_terms
from helpers import scores_by_hand, tiny_config

DIM = 16


def leo_config(**overrides):
    values = dict(algorithm="leo", model="none", dataset="embeddings", embedding_dim=DIM, num_latents=4,
                  ways=3, shots=2, query=3, meta_batch=3, eval_inner_steps=5, dropout_rate=0.3,
                  inner_steps=5, inner_lr=0.4)  # the defaults, not tiny_config's: LEO reads neither
    values.update(overrides)
    return tiny_config(**values)


def build(**overrides):
    torch.manual_seed(0)
    return algorithms.build(leo_config(**overrides)).double()


def make_tasks(count, ways=3, shots=2, query=3, seed=0):
    """Tasks of clustered features; support rows in shuffled label order, as a sampler gives."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(count):
        centres = torch.randn(ways, DIM, generator=g, dtype=torch.float64)
        sy = torch.arange(ways).repeat_interleave(shots)[torch.randperm(ways * shots, generator=g)]
        qy = torch.arange(ways).repeat_interleave(query)
        noise = lambda n: 0.5 * torch.randn(n, DIM, generator=g, dtype=torch.float64)
        tasks.append(Task(centres[sy] + noise(len(sy)), sy, centres[qy] + noise(len(qy)), qy))
    return tasks


def support_loss(algorithm, task, adapted):
    return algorithm.family.loss(algorithm.predict(adapted, task.support_x), task.support_y).item()


def test_latent_adaptation_lowers_the_support_loss():
    algorithm = build(finetuning_unroll_length=0)  # the latent loop alone
    for task in make_tasks(3):
        before = support_loss(algorithm, task, algorithm.adapt(task.support_x, task.support_y, steps=0))
        after = support_loss(algorithm, task, algorithm.adapt(task.support_x, task.support_y, steps=5))
        assert after < before


def test_fine_tuning_lowers_the_support_loss_further():
    task = make_tasks(1)[0]
    latent_only = build(finetuning_unroll_length=0, finetuning_lr_init=1.0)
    both = build(finetuning_unroll_length=5, finetuning_lr_init=1.0)
    a = support_loss(latent_only, task, latent_only.adapt(task.support_x, task.support_y))
    b = support_loss(both, task, both.adapt(task.support_x, task.support_y))
    assert b < a


def test_the_decoder_gives_classifier_weights_of_the_classifiers_shape():
    algorithm = build()
    task = make_tasks(1, ways=4, shots=3)[0]
    support = algorithm.group(task.support_x, task.support_y).unsqueeze(0)
    assert support.shape == (1, 4, 3, DIM)
    latents, _ = algorithm.encode(support, Noise([None]))
    assert latents.shape == (1, 4, 3, 4)  # T x N x K x num_latents
    for noise in (Noise([None]), None):  # meta-train (sampled), meta-test (means)
        weights = algorithm.decode(latents, noise)
        assert weights.shape == support.shape  # one D-vector per class and support example
        assert algorithm.logits(support.reshape(1, 12, DIM), weights, noise).shape == (1, 12, 4)
    adapted = algorithm.adapt(task.support_x, task.support_y)
    assert algorithm.predict(adapted, task.query_x).shape == (len(task.query_x), 4)  # any number of classes


def test_orthogonality_penalty_is_zero_for_orthonormal_rows_and_positive_otherwise():
    q, _ = torch.linalg.qr(torch.randn(2 * DIM, 4, dtype=torch.float64))
    assert orthogonality(q.t()).item() < 1e-20  # 4 orthonormal rows
    assert orthogonality(3.0 * q.t()).item() < 1e-20  # a correlation: the rows' lengths do not matter
    algorithm = build(orthogonality_penalty_weight=2.0)
    with torch.no_grad():
        algorithm.decoder.copy_(q.t())
    assert algorithm.orthogonality_penalty().item() < 1e-20
    with torch.no_grad():
        algorithm.decoder[1] = algorithm.decoder[0] + 0.1 * algorithm.decoder[1]
    assert algorithm.orthogonality_penalty().item() > 1e-3
    # two equal unit rows: correlation 1 off the diagonal, twice, over a 2 x 2 matrix
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert orthogonality(rows).item() == pytest.approx(0.5)


def test_kl_term_matches_the_closed_form():
    torch.manual_seed(0)
    mean = torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 0.3], dtype=torch.float64)
    closed = (0.5 * (std ** 2 + mean ** 2 - 1) - torch.log(std)).mean().item()
    samples = mean + std * torch.randn(50_000, 4, dtype=torch.float64)
    estimate = kl_divergence(samples, mean.expand_as(samples), std.expand_as(samples)).item()
    assert estimate == pytest.approx(closed, abs=0.02)
    # at the prior the estimate is exactly zero, sample by sample
    z = torch.randn(10, dtype=torch.float64)
    assert kl_divergence(z, torch.zeros(10, dtype=torch.float64), torch.ones(10, dtype=torch.float64)).item() == 0
    x = torch.randn(5, dtype=torch.float64)
    expected = torch.distributions.Normal(mean[:1], std[:1]).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean[:1], std[:1]), expected)


def test_std_is_exp_minus_one_plus_the_offset_and_never_zero():
    params = torch.tensor([[0.3, -0.2, math.log(2.0), -50.0]], dtype=torch.float64)
    mean, std = split_gaussian(params, stddev_offset=0.25)
    assert mean.tolist() == [[0.3, -0.2]]
    assert std[0, 0].item() == pytest.approx(2.0 - 0.75) and std[0, 1].item() == pytest.approx(1e-10)


def test_the_meta_gradient_reaches_the_learned_rates_and_every_weight():
    algorithm = build()
    tasks = make_tasks(3)
    for position, task in enumerate(tasks):
        task.seed = (5, 0, position)  # fixed draws, so the result can be recomputed exactly
    result = algorithm.meta_gradient(tasks)
    # the logged loss is the query cross-entropy alone, the accuracy the fraction of argmax hits,
    # both as leo_terms (the objective written out in test_gradients.py) computes them
    terms, _, logits = leo_terms(algorithm, tasks, None)
    hits = (logits.argmax(-1) == torch.stack([t.query_y for t in tasks])).double().mean(-1)
    assert float(result["loss"]) == pytest.approx(terms[0], rel=1e-12)
    assert float(result["accuracy"]) == pytest.approx(hits.mean().item(), abs=1e-12)
    for name in ("inner_lr", "finetuning_lr", "encoder", "decoder", "relation.0", "relation.2"):
        grad = dict(algorithm.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_the_penalties_enter_the_objective_with_their_weights():
    tasks = make_tasks(2)
    grads = {}
    for weight in (0.0, 10.0):
        algorithm = build(orthogonality_penalty_weight=weight, l2_penalty_weight=0.0)
        torch.manual_seed(1)
        algorithm.meta_gradient(tasks)
        grads[weight] = algorithm.decoder.grad.clone()
        with torch.enable_grad():
            expected = torch.autograd.grad(weight * algorithm.orthogonality_penalty(), algorithm.decoder)[0]
    torch.testing.assert_close(grads[10.0] - grads[0.0], expected)


def test_a_non_finite_loss_falls_back_to_the_l2_gradient():
    algorithm = build()
    with torch.no_grad():
        algorithm.inner_lr.fill_(float("nan"))
    result = algorithm.finish_meta_gradient(algorithm.meta_gradient(make_tasks(2)))
    torch.testing.assert_close(algorithm.encoder.grad, 1e-4 * algorithm.encoder.detach())
    assert algorithm.inner_lr.grad.abs().sum() == 0
    assert math.isnan(result["loss"]) and math.isnan(result["accuracy"])  # the trainer counts it, skips it in means


def test_meta_test_adaptation_uses_no_dropout_and_no_sampling():
    """The same weights with dropout 0.9 and 0: at meta-test the rate cannot matter (the reference's
    dropout_rate is 0 outside meta-training), nor the random state (means, not samples)."""
    task = make_tasks(1)[0]
    adapted = {}
    for rate, seed in ((0.9, 1), (0.0, 2)):
        algorithm = build(dropout_rate=rate)  # seeded: the same weights
        torch.manual_seed(seed)
        adapted[rate] = algorithm.adapt(task.support_x, task.support_y)["weights"]
        logits = algorithm.predict({"weights": adapted[rate]}, task.query_x)
        adapted[rate, "logits"] = logits
    assert torch.equal(adapted[0.9], adapted[0.0])
    assert torch.equal(adapted[0.9, "logits"], adapted[0.0, "logits"])
    # and the rate does matter at meta-train, where the same draws are made at both rates
    gradients = {}
    for rate in (0.9, 0.0):
        algorithm = build(dropout_rate=rate)
        algorithm.meta_gradient([replace(task, seed=(1, 0, 0))])
        gradients[rate] = algorithm.encoder.grad
    assert not torch.allclose(gradients[0.9], gradients[0.0])


def test_leo_refuses_a_backbone_and_support_sets_of_unequal_classes():
    with pytest.raises(FewshotError, match="set model: none"):
        algorithms.build(leo_config(model="conv4"))
    algorithm = build()
    task = make_tasks(1)[0]
    with pytest.raises(FewshotError, match="same number of support examples"):
        algorithm.adapt(task.support_x[:-1], task.support_y[:-1])


@pytest.fixture
def embeddings(tmp_path):
    folder = tmp_path / "embeddings" / "miniImageNet" / "center"
    write_synthetic(folder, dim=DIM, per_class=8, spread=0.3)
    return str(tmp_path / "embeddings")


def test_train_and_evaluate_on_embedding_files(tmp_path, embeddings):
    config = leo_config(data=embeddings, embedding_dataset="miniImageNet", steps=4, val_tasks=3, eval_tasks=4,
                        grad_clip_value=0.1, grad_clip_norm=0.1, meta_lr=0.005)
    result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == 4 and not result["stopped"]
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert {"inner_lr", "finetuning_lr", "decoder"} <= set(state["algorithm"])
    evaluated = evaluate_checkpoint(tmp_path / "run", progress=False, at_steps=[0])
    assert evaluated["tasks"] == 4 and evaluated["algorithm"] == "leo"
    scores = scores_by_hand(evaluated, 4)
    assert evaluated["scores"] == pytest.approx(scores, abs=1e-12)
    assert evaluated["mean"] == pytest.approx(sum(scores) / 4, abs=1e-12)
    assert set(evaluated["by_steps"]) == {"0", "5"} and "learned" in evaluated["inner_lr"]


def test_gradient_clipping_happens_before_the_optimizer_step(tmp_path, embeddings):
    """Clipping to 1e-20, by value or by norm (zero is refused), leaves Adam a step of lr * 1e-20 /
    (1e-20 + 1e-8), below the float32 resolution of every weight: the weights come back unchanged."""
    base = leo_config(data=embeddings, embedding_dataset="miniImageNet", steps=2, val_every=100, save_every=100)
    torch.manual_seed(base.seed)  # as the trainer seeds before building
    initial = {n: p.detach().clone() for n, p in algorithms.build(base).named_parameters()}
    for name, clip in (("none", {}), ("value", {"grad_clip_value": 1e-20}), ("norm", {"grad_clip_norm": 1e-20})):
        train(base.unchecked_replace(**clip), tmp_path / name, progress=False)
        weights = checkpoint.load(tmp_path / name / "last.pt")["algorithm"]
        unchanged = all(torch.equal(weights[n], initial[n]) for n in initial)
        assert unchanged == (name != "none"), name


def test_a_run_on_other_embeddings_starts_from_a_trained_leo(tmp_path, embeddings):
    """Transfer (the paper's miniImageNet -> tieredImageNet): --init, then training continues."""
    source = leo_config(data=embeddings, embedding_dataset="miniImageNet", steps=3, meta_lr=0.01)
    train(source, tmp_path / "source", progress=False)
    write_synthetic(tmp_path / "other" / "tieredImageNet" / "center", dim=DIM, per_class=8, seed=5)
    target = leo_config(data=str(tmp_path / "other"), embedding_dataset="tieredImageNet", steps=2, meta_lr=0.0,
                        init=str(tmp_path / "source" / "last.pt"))
    train(target, tmp_path / "target", progress=False)
    before = checkpoint.load(tmp_path / "source" / "last.pt")["algorithm"]
    after = checkpoint.load(tmp_path / "target" / "last.pt")["algorithm"]
    assert all(torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(FewshotError, match="encoder is"):  # other embedding sizes cannot transfer
        train(target.unchecked_replace(embedding_dim=DIM * 2), tmp_path / "wider", progress=False)


def test_two_process_training_follows_the_one_process_run(tmp_path, embeddings):
    """--procs 2 through the trainer: the same sampled tasks and draws, split across ranks."""
    config = leo_config(data=embeddings, embedding_dataset="miniImageNet", steps=3, meta_batch=4, val_every=3,
                        save_every=3, meta_lr=0.01, threads=1)
    train(config, tmp_path / "one", progress=False)
    train(config, tmp_path / "two", progress=False, procs=2)
    one = checkpoint.load(tmp_path / "one" / "last.pt")["algorithm"]
    two = checkpoint.load(tmp_path / "two" / "last.pt")["algorithm"]
    torch.manual_seed(config.seed)  # as the trainer seeds before building
    initial = algorithms.build(config).state_dict()
    for name in one:
        assert not torch.equal(one[name], initial[name]), name  # training moved every weight
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)  # float32 sums in another order


def test_an_interrupted_and_resumed_leo_run_equals_an_uninterrupted_one(tmp_path, embeddings):
    config = leo_config(data=embeddings, embedding_dataset="miniImageNet", steps=4, save_every=2, val_every=2,
                        meta_lr=0.01)
    train(config, tmp_path / "full", progress=False)
    assert train(config, tmp_path / "part", progress=False, stop_after=2)["stopped"]
    train(out=tmp_path / "part", resume=True, progress=False)
    full = checkpoint.load(tmp_path / "full" / "last.pt")["algorithm"]
    resumed = checkpoint.load(tmp_path / "part" / "last.pt")["algorithm"]
    assert all(torch.equal(full[n], resumed[n]) for n in full)


# deepmind/leo README.md (commit de9a0c2), "The hyperparameters we found working best":
# outer_lr, l2_penalty_weight, orthogonality_penalty_weight, dropout_rate, kl_weight, encoder_penalty_weight
DEEPMIND_TABLE = {
    "miniimagenet-5w1s": (2.739071e-4, 3.623413e-10, 0.188103, 0.307651, 0.756143, 5.756821e-6),
    "miniimagenet-5w5s": (4.102361e-4, 8.540338e-9, 1.523998e-3, 0.300299, 0.466387, 2.661608e-7),
    "tieredimagenet-5w1s": (8.659053e-4, 4.148858e-10, 5.451078e-3, 0.475126, 2.034189e-3, 8.302962e-5),
    "tieredimagenet-5w5s": (6.110314e-4, 1.690399e-10, 2.481216e-2, 0.415158, 1.622811, 2.672450e-5),
}
# the MindSpore port's README (../shared/seeds/mindspore-leo.md), its per-experiment table, same order
MINDSPORE_TABLE = {
    "miniimagenet-5w1s": (0.005, 0.0001, 303.0, 0.3, 0.001, 1e-9),
    "miniimagenet-5w5s": (0.005, 8.5e-6, 0.00152, 0.3, 0.001, 2.66e-7),
    "tieredimagenet-5w1s": (0.005, 5.10e-6, 4.88e-1, 0.2, 0.0, 5.7e-1),
    "tieredimagenet-5w5s": (0.0025, 3.6e-10, 0.188, 0.3, 0.001, 5.7e-6),
}
PAPER = {"miniimagenet-5w1s": "61.76", "miniimagenet-5w5s": "77.59", "tieredimagenet-5w1s": "66.33",
         "tieredimagenet-5w5s": "81.44"}
MINDSPORE = {"miniimagenet-5w1s": "59.59", "miniimagenet-5w5s": "75.60", "tieredimagenet-5w1s": "66.44",
             "tieredimagenet-5w5s": "80.94"}


@pytest.mark.parametrize("experiment", sorted(DEEPMIND_TABLE))
def test_leo_presets_take_the_values_of_the_source_they_quote(experiment):
    """leo-<experiment> quotes the paper and takes deepmind/leo's values; leo-mindspore-<experiment>
    quotes the MindSpore port and takes its table. The settings both share are deepmind/leo config.py's."""
    from fewshot.config import load_preset
    keys = ("meta_lr", "l2_penalty_weight", "orthogonality_penalty_weight", "dropout_rate", "kl_weight",
            "encoder_penalty_weight")
    for preset, table, number in ((f"leo-{experiment}", DEEPMIND_TABLE, PAPER),
                                  (f"leo-mindspore-{experiment}", MINDSPORE_TABLE, MINDSPORE)):
        config = load_preset(preset)
        assert tuple(getattr(config, key) for key in keys) == table[experiment], preset
        assert number[experiment] in config.description, preset
        assert (config.ways, config.shots, config.query) == (5, int(experiment[-2]), 15)
        assert (config.num_latents, config.inner_unroll_length, config.finetuning_unroll_length,
                config.inner_lr_init, config.finetuning_lr_init) == (64, 5, 5, 1.0, 0.001)
        assert (config.meta_batch, config.grad_clip_value, config.grad_clip_norm, config.steps) == \
            (12, 0.1, 0.1, 100000)
