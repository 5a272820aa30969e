"""Each algorithm's meta-gradient against central finite differences, in float64, of its
meta-objective written out here from the papers' definitions (not through the
algorithm's own inner loop): Meta-SGD with its learned rates, MAML++ (per-step batch
norm, per-layer per-step rates, the multi-step loss, first order before the switch and
second order after it), ANIL, and LEO's whole outer objective. ProtoNets' logits
against a written-out distance on torch.cdist's matrix-product path.

Each objective returns its terms separately; the checks assert that the analytic
gradient equals the sum of the terms' derivatives and that every term moves some
checked derivative by far more than the tolerance, so an implementation that dropped
any term would fail. The MAML family is checked by both of its paths: the per-task loop
and the batched pass (`batch_tasks`)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fewshot import algorithms
from fewshot.algorithms.leo import Noise
from fewshot.data.episodes import Task

from algorithms.test_maml import make_tasks
from helpers import gradient_mismatches, sampled_finite_differences, terms_that_matter, tiny_config


def build(**overrides):
    torch.manual_seed(0)
    return algorithms.build(tiny_config(**overrides)).double()


def analytic_gradient(algorithm, tasks, step=0):
    algorithm.zero_grad()
    algorithm.meta_gradient(tasks, step)
    return {n: p.grad.clone() for n, p in algorithm.named_parameters()}


def both_paths(algorithm, tasks, step=0):
    """The MAML family's meta-gradient by its per-task loop and by its batched pass."""
    gradients = []
    for batched in (False, True):
        algorithm.config.batch_tasks = batched
        assert algorithm.batches_tasks(tasks) == batched
        gradients.append(analytic_gradient(algorithm, tasks, step))
    return gradients


def check(algorithm, objective, analytics, per_tensor=4):
    """Finite differences of `objective` at sampled entries of every parameter against each of the
    `analytics` (a gradient, or several computed differently)."""
    rows = sampled_finite_differences(objective, dict(algorithm.named_parameters()), per_tensor)
    for analytic in analytics if isinstance(analytics, list) else [analytics]:
        assert gradient_mismatches(rows, analytic) == []
    assert all(terms_that_matter(rows))
    return rows


# ---------------------------------------------------------------------------------------------------
# The MAML family on a tiny conv4: theta'_{k+1} = theta'_k - alpha_k * grad L_support(theta'_k).

def adapted_trajectory(model, params, task, rates, adapts, bn_steps=False, held_grads=None):
    """The inner loop written out: [theta'_0, theta'_1, ...], theta'_{k+1} = theta'_k - rates(name, k) *
    dL_support/dtheta'_k for the adapted names. `held_grads[k]` replaces the gradient at step k by a
    constant (the first-order objective); without it the gradient is a function of theta."""
    trajectory = [params]
    for k in range(len(held_grads) if held_grads is not None else adapts.steps):
        current = trajectory[-1]
        names = [n for n in current if adapts(n)]
        if held_grads is not None:
            grads = [held_grads[k][n] for n in names]
        else:
            out = model.functional_forward(current, task.support_x, True, bn_step=k if bn_steps else 0)
            grads = torch.autograd.grad(F.cross_entropy(out, task.support_y), [current[n] for n in names],
                                        create_graph=True)
        trajectory.append({**current, **{n: current[n] - rates(n, k) * g for n, g in zip(names, grads)}})
    return trajectory


class Adapts:
    def __init__(self, steps, rule):
        self.steps, self.rule = steps, rule

    def __call__(self, name):
        return self.rule(name)


def query_loss(model, params, task, bn_step=0):
    return F.cross_entropy(model.functional_forward(params, task.query_x, True, bn_step=bn_step), task.query_y)


def test_metasgd_meta_gradient_with_its_learned_rates_matches_finite_differences():
    algorithm = build(algorithm="metasgd", inner_steps=2, downsample="stride", image_size=12)
    model, tasks = algorithm.model, make_tasks(2, size=12)
    with torch.no_grad():  # rates that differ entry by entry, so an entry-wise bug cannot hide
        for rates in algorithm.step_sizes.values():
            rates.uniform_(0.05, 0.5)

    def objective():
        total = 0.0
        for task in tasks:
            params = dict(model.named_parameters())
            rates = lambda name, k: algorithm.step_sizes[name.replace(".", "/")]
            final = adapted_trajectory(model, params, task, rates, Adapts(2, lambda n: True))[-1]
            total += query_loss(model, final, task).item() / len(tasks)
        return [total]

    check(algorithm, objective, both_paths(algorithm, tasks))


def test_anil_meta_gradient_matches_finite_differences():
    algorithm = build(algorithm="anil", inner_steps=2, inner_lr=0.4)  # max-pool: the other conv4
    model, tasks = algorithm.model, make_tasks(2)

    def objective():
        total = 0.0
        for task in tasks:
            params = dict(model.named_parameters())
            head_only = Adapts(2, lambda n: n.startswith("head."))
            final = adapted_trajectory(model, params, task, lambda n, k: 0.4, head_only)[-1]
            total += query_loss(model, final, task).item() / len(tasks)
        return [total]

    rows = check(algorithm, objective, both_paths(algorithm, tasks))
    # and it is ANIL's objective, not MAML's: adapting the body too gives other derivatives
    def maml_objective():
        total = 0.0
        for task in tasks:
            final = adapted_trajectory(model, dict(model.named_parameters()), task, lambda n, k: 0.4,
                                       Adapts(2, lambda n: True))[-1]
            total += query_loss(model, final, task).item() / len(tasks)
        return [total]
    body = {n: p for n, p in algorithm.named_parameters() if n == "model.blocks.3.conv.weight"}
    maml_rows = sampled_finite_differences(maml_objective, body)
    anil_rows = [row for row in rows if row[0] == "model.blocks.3.conv.weight"]
    assert max(abs(sum(a[2]) - sum(m[2])) for a, m in zip(anil_rows, maml_rows)) > 1e-4


# MAML++: 3 inner steps, an "epoch" of 10 meta-steps, the multi-step loss over 2 epochs and
# first order for the first epoch. At meta-step 5 (epoch 5 // 10 = 0, first order) the loss
# weights are uniform, 1/3 each; at meta-step 10 (epoch 1, second order) 1/3 - 1/3/2 = 1/6 for
# the first two steps and 2/3 for the last.
MAMLPP_STEPS = 3
MAMLPP_WEIGHTS = {5: [1 / 3, 1 / 3, 1 / 3], 10: [1 / 6, 1 / 6, 2 / 3]}


def build_mamlpp():
    algorithm = build(algorithm="mamlpp", per_step_bn=True, inner_steps=MAMLPP_STEPS,
                      eval_inner_steps=MAMLPP_STEPS, msl_epochs=2, first_order_epochs=1, steps_per_epoch=10,
                      downsample="stride", image_size=12)
    with torch.no_grad():  # distinct rates per tensor and step, distinct batch-norm weights per step
        for rates in algorithm.step_sizes.values():
            rates.uniform_(0.05, 0.3)
        for name, p in algorithm.model.named_parameters():
            if ".norm." in name:
                p.add_(0.3 * torch.randn_like(p))
    return algorithm


def mamlpp_objective(algorithm, tasks, weights, held_grads=None):
    """sum_k w_k * L_query(theta'_{k+1}, batch-norm row k), theta'_{k+1} computed from the support loss at
    theta'_k with batch-norm row k (the authors' target pass after step k uses the support pass's row),
    rates alpha[tensor][k], batch-norm weights not adapted. With `held_grads` (one list per task), the
    inner gradients are those constants: the first-order objective."""
    model = algorithm.model
    rates = lambda name, k: algorithm.step_sizes[name.replace(".", "/")][k]
    adapts = Adapts(MAMLPP_STEPS, lambda n: ".norm." not in n)
    terms = [0.0] * MAMLPP_STEPS
    for t, task in enumerate(tasks):
        params = dict(model.named_parameters())
        trajectory = adapted_trajectory(model, params, task, rates, adapts, bn_steps=True,
                                        held_grads=None if held_grads is None else held_grads[t])
        for k in range(MAMLPP_STEPS):
            terms[k] += weights[k] * query_loss(model, trajectory[k + 1], task, bn_step=k).item() / len(tasks)
    return terms


def inner_gradients(algorithm, tasks):
    """The support-loss gradients along each task's trajectory at the current weights, as constants."""
    model = algorithm.model
    rates = lambda name, k: algorithm.step_sizes[name.replace(".", "/")][k]
    held = []
    for task in tasks:
        trajectory = adapted_trajectory(model, dict(model.named_parameters()), task, rates,
                                        Adapts(MAMLPP_STEPS, lambda n: ".norm." not in n), bn_steps=True)
        per_step = []
        for k in range(MAMLPP_STEPS):
            names = [n for n in trajectory[k] if ".norm." not in n]
            out = model.functional_forward(trajectory[k], task.support_x, True, bn_step=k)
            grads = torch.autograd.grad(F.cross_entropy(out, task.support_y), [trajectory[k][n] for n in names])
            per_step.append({n: g.detach() for n, g in zip(names, grads)})
        held.append(per_step)
    return held


def test_mamlpp_second_order_meta_gradient_matches_finite_differences_after_the_switch():
    algorithm = build_mamlpp()
    tasks = make_tasks(2, size=12)
    assert algorithm.second_order(10) and algorithm.loss_weights(10) == pytest.approx(MAMLPP_WEIGHTS[10], abs=1e-15)
    loop, batched = both_paths(algorithm, tasks, step=10)
    rows = check(algorithm, lambda: mamlpp_objective(algorithm, tasks, MAMLPP_WEIGHTS[10]), [loop, batched])
    analytic = loop
    # the per-step batch-norm rows 0..2 are all used (support at step k and query after it: row k)
    norm = dict(algorithm.named_parameters())["model.blocks.1.norm.weight"]
    assert norm.shape[0] == MAMLPP_STEPS
    assert all(analytic["model.blocks.1.norm.weight"][row].abs().sum() > 1e-6 for row in range(MAMLPP_STEPS))
    assert any(name.startswith("step_sizes.") for name, _, _ in rows)


def test_mamlpp_first_order_meta_gradient_is_the_derivative_with_inner_gradients_held_constant():
    algorithm = build_mamlpp()
    tasks = make_tasks(2, size=12)
    assert not algorithm.second_order(5) and algorithm.loss_weights(5) == pytest.approx(MAMLPP_WEIGHTS[5], abs=1e-15)
    loop, batched = both_paths(algorithm, tasks, step=5)
    held = inner_gradients(algorithm, tasks)
    check(algorithm, lambda: mamlpp_objective(algorithm, tasks, MAMLPP_WEIGHTS[5], held), [loop, batched])
    analytic = loop
    # and it is not the second-order gradient: the full objective's derivatives differ
    second = sampled_finite_differences(lambda: mamlpp_objective(algorithm, tasks, MAMLPP_WEIGHTS[5]),
                                        {"model.blocks.2.conv.weight": algorithm.model.blocks[2].conv.weight})
    assert len(gradient_mismatches(second, analytic)) >= 2


# ---------------------------------------------------------------------------------------------------
# LEO: the outer objective of deepmind/leo model.py, every term.

DIM, LATENTS = 6, 3
LEO_WEIGHTS = dict(kl_weight=0.5, encoder_penalty_weight=0.5, l2_penalty_weight=0.01,
                   orthogonality_penalty_weight=0.5)


def build_leo():
    torch.manual_seed(0)
    config = tiny_config(algorithm="leo", model="none", dataset="embeddings", embedding_dim=DIM,
                         num_latents=LATENTS, ways=3, shots=2, query=2, inner_unroll_length=2,
                         finetuning_unroll_length=2, inner_lr_init=0.5, finetuning_lr_init=0.3, dropout_rate=0.3,
                         **LEO_WEIGHTS)
    algorithm = algorithms.build(config).double()
    with torch.no_grad():
        # The relation network's std outputs made positive (its inputs are ReLUs), so no latent std
        # sits at the 1e-10 floor: there the one-sample KL estimate divides float64 rounding of
        # (sample - mean) by 1e-10, which finite differences cannot see through.
        algorithm.relation[2][:, LATENTS:].abs_()
        algorithm.inner_lr.uniform_(0.3, 0.8)
        algorithm.finetuning_lr.uniform_(0.1, 0.5)
    return algorithm


def leo_tasks(count=2):
    g = torch.Generator().manual_seed(3)
    tasks = []
    for position in range(count):
        sy = torch.tensor([2, 0, 1, 0, 2, 1])
        qy = torch.tensor([0, 0, 1, 1, 2, 2])
        tasks.append(Task(torch.randn(6, DIM, generator=g, dtype=torch.float64), sy,
                          torch.randn(6, DIM, generator=g, dtype=torch.float64), qy, seed=(11, 0, position)))
    return tasks


def leo_terms(algorithm, tasks, adapted_latents):
    """[query CE, beta * KL, gamma * mean(stop_gradient(z') - z)^2, lambda_1 * sum w^2 / 2, lambda_2 *
    orthogonality], the adapted latents z' (T x N x K x L), the query logits (T x M x N); z' held at
    `adapted_latents` (the stop-gradient). Written out task by task from deepmind/leo model.py
    (`encoder`, `relation_network`, `average_codes_per_class`, `possibly_sample`, `decoder`,
    `predict`, `leo_inner_loop`, `finetuning_inner_loop`), with torch.distributions for the
    Gaussians: only the weights and each task's random generator (seeded from the task's seed, as
    fewshot seeds it) come from the algorithm. A task's draws, in the reference graph's order:
    the encoder's dropout mask and the latent sample, then per decode a weight sample and per
    classifier call a dropout mask."""
    config = algorithm.config
    rate, latent_units = config.dropout_rate, config.num_latents
    generators = Noise([t.seed for t in tasks]).generators
    per_task, all_latents, all_logits = [], [], []
    for index, (task, generator) in enumerate(zip(tasks, generators)):
        def dropout(x):  # tf.nn.dropout(x, rate): keep with probability 1 - rate, scaled by 1 / (1 - rate)
            return x * (torch.rand(x.shape, generator=generator, dtype=x.dtype) >= rate) / (1 - rate)

        def sample(params, stddev_offset):  # possibly_sample: (sample, Normal) of [means, unnormalized std]
            mean, unnormalized = params.chunk(2, dim=-1)
            std = torch.clamp(torch.exp(unnormalized) - (1.0 - stddev_offset), min=1e-10)
            return mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype), \
                torch.distributions.Normal(mean, std)

        ways = int(task.support_y.max()) + 1
        support = torch.stack([F.normalize(task.support_x[task.support_y == c], dim=-1) for c in range(ways)])
        n, k, dim = support.shape
        labels = torch.arange(n).repeat_interleave(k)

        def predict(inputs, weights):  # einsum("ijk,lmk->ijlm") of dropped-out inputs, mean over the K weights
            return torch.einsum("md,nkd->mnk", dropout(inputs), weights).mean(-1)

        def decode(latents):  # decoder (no bias), sampled with the Glorot offset sqrt(2 / (N + D))
            return sample(latents @ algorithm.decoder, math.sqrt(2.0 / (n + dim)))[0]

        def support_loss(weights):  # the per-example cross-entropy of the support set, summed by tf.gradients
            return F.cross_entropy(predict(support.reshape(n * k, dim), weights), labels, reduction="sum")

        with torch.enable_grad():
            codes = (dropout(support) @ algorithm.encoder).reshape(n * k, latent_units)
            pairs = torch.cat([codes[:, None].expand(n * k, n * k, latent_units),
                               codes[None, :].expand(n * k, n * k, latent_units)], dim=-1)  # (left i, right j)
            first, second, third = algorithm.relation  # snt.nets.MLP([2L] * 3, use_bias=False): ReLU between
            relation = (F.relu(F.relu(pairs @ first) @ second) @ third).mean(1)  # mean over j
            class_params = relation.reshape(n, k, 2 * latent_units).mean(1, keepdim=True).expand(n, k, -1)
            start, posterior = sample(class_params, 0.0)
            prior = torch.distributions.Normal(torch.zeros_like(start), torch.ones_like(start))
            kl = (posterior.log_prob(start) - prior.log_prob(start)).mean()
            latents = start
            weights = decode(latents)
            loss = support_loss(weights)
            for _ in range(config.inner_unroll_length):
                grad, = torch.autograd.grad(loss, latents, create_graph=True)
                latents = latents - algorithm.inner_lr * grad
                weights = decode(latents)
                loss = support_loss(weights)
            for _ in range(config.finetuning_unroll_length):
                grad, = torch.autograd.grad(loss, weights, create_graph=True)
                weights = weights - algorithm.finetuning_lr * grad
                loss = support_loss(weights)
            logits = predict(F.normalize(task.query_x, dim=-1), weights)
        target = latents.detach() if adapted_latents is None else adapted_latents[index]
        per_task.append((F.cross_entropy(logits, task.query_y), kl, ((target - start) ** 2).mean()))
        all_latents.append(latents.detach())
        all_logits.append(logits.detach())
    query_ce, kl, penalty = (sum(values) / len(tasks) for values in zip(*per_task))
    l2 = sum((w ** 2).sum() for w in [algorithm.encoder, *algorithm.relation, algorithm.decoder]) / 2
    rows, latent_rows = algorithm.decoder, algorithm.decoder.shape[0]
    correlation = torch.stack([torch.stack([rows[i] @ rows[j] / (rows[i].norm() * rows[j].norm())
                                            for j in range(latent_rows)]) for i in range(latent_rows)])
    orthogonality = ((correlation - torch.eye(latent_rows, dtype=rows.dtype)) ** 2).mean()
    terms = [query_ce, config.kl_weight * kl, config.encoder_penalty_weight * penalty,
             config.l2_penalty_weight * l2, config.orthogonality_penalty_weight * orthogonality]
    return [t.item() for t in terms], torch.stack(all_latents), torch.stack(all_logits)


def test_leo_meta_gradient_of_its_whole_outer_objective_matches_finite_differences():
    algorithm = build_leo()
    tasks = leo_tasks()
    analytic = analytic_gradient(algorithm, tasks)
    assert all(torch.isfinite(g).all() for g in analytic.values())
    _, adapted, _ = leo_terms(algorithm, tasks, None)  # z' at these weights: constant under the stop-gradient
    objective = lambda: leo_terms(algorithm, tasks, adapted)[0]
    rows = check(algorithm, objective, analytic, per_tensor=5)
    names = {name for name, _, _ in rows}
    assert {"encoder", "decoder", "relation.0", "relation.1", "relation.2", "inner_lr", "finetuning_lr"} <= names


def test_leo_encoder_penalty_holds_the_adapted_code_constant():
    """Differentiating through z' too (no stop-gradient) gives another gradient: the check above
    is sensitive to where the reference stops it."""
    algorithm = build_leo()
    tasks = leo_tasks()
    analytic = analytic_gradient(algorithm, tasks)
    through = sampled_finite_differences(lambda: leo_terms(algorithm, tasks, None)[0],
                                         {"encoder": algorithm.encoder}, per_tensor=6)
    assert gradient_mismatches(through, analytic) != []


# ---------------------------------------------------------------------------------------------------
# Prototypical Networks: the logits on torch.cdist's matrix-product path.

def test_protonet_logits_on_the_cdist_matrix_product_path_are_minus_squared_distances():
    """torch.cdist computes ||q||^2 - 2 q.p + ||p||^2 by a matrix product when either input has
    more than 25 rows; 5 classes x 6 queries = 30 rows takes that path."""
    algorithm = build(algorithm="protonet", head=False, ways=5)
    task = make_tasks(1, ways=5, shots=3, query=6)[0]
    assert len(task.query_x) > 25
    algorithm.eval()
    logits = algorithm.predict(algorithm.adapt(task.support_x, task.support_y), task.query_x)
    with torch.no_grad():
        features = algorithm.model.functional_forward(dict(algorithm.model.named_parameters()),
                                                      torch.cat([task.support_x, task.query_x]), False)
    support, query = features[:len(task.support_x)].tolist(), features[len(task.support_x):].tolist()
    labels = task.support_y.tolist()
    expected = []
    for q in query:
        row = []
        for c in range(5):
            members = [s for s, y in zip(support, labels) if y == c]
            mean = [sum(values) / len(members) for values in zip(*members)]
            row.append(-sum((a - b) ** 2 for a, b in zip(q, mean)))
        expected.append(row)
    assert logits.shape == (30, 5)
    for got, want in zip(logits.tolist(), expected):
        for a, b in zip(got, want):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
    assert not any(math.isnan(v) for row in logits.tolist() for v in row)


def test_protonet_meta_gradient_matches_finite_differences():
    """The query cross-entropy of -squared distances to the class means, support and query embedded
    in one batch (batch statistics over both, as the authors' code)."""
    algorithm = build(algorithm="protonet", head=False, downsample="stride", image_size=12)
    tasks = make_tasks(2, size=12)

    def objective():
        total = 0.0
        for task in tasks:
            features = algorithm.model.functional_forward(dict(algorithm.model.named_parameters()),
                                                          torch.cat([task.support_x, task.query_x]), True)
            support, query = features[:len(task.support_x)], features[len(task.support_x):]
            means = torch.stack([support[task.support_y == c].mean(0) for c in range(3)])
            logits = -((query[:, None, :] - means[None, :, :]) ** 2).sum(-1)
            total += F.cross_entropy(logits, task.query_y).item() / len(tasks)
        return [total]

    check(algorithm, objective, analytic_gradient(algorithm, tasks))
