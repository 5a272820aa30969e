"""LEO: meta-learning with latent embedding optimization (Rusu et al., ICLR 2019).

LEO meta-learns on fixed image embeddings (dataset `embeddings`, model `none`).
It follows the reference implementation, github.com/deepmind/leo `model.py`
(class `LEO`), with the hyperparameter names of its `config.py`:

- inputs: each embedding L2-normalized, as the reference's data provider does
  (`tf.nn.l2_normalize` in `data.py`, `get_instance`);
- encoder: dropout (`dropout_rate`, meta-train only), then a linear map D -> L
  (`num_latents`), no bias, per support example;
- relation network: a 3-layer MLP (2L units per layer, ReLU between layers, no
  bias) on the concatenated codes of every ordered pair of the task's N*K support
  examples, averaged over the pair's second member, then over each class's K
  examples: the mean and unnormalized std (2L numbers) of a Gaussian per class;
- latent code: z ~ N(mu, sigma), sigma = max(exp(s) - 1, 1e-10), sampled at
  meta-train (a sample per support example), the mean at meta-test;
- decoder: a linear map L -> 2D, no bias: mean and unnormalized std of each
  class's classifier weights, sampled like z with sigma offset by the Glorot
  scale sqrt(2 / (N + D)) at meta-train, the mean at meta-test;
- classifier: logit of class c for input x = mean over k of x . w[c, k] (x with
  dropout at meta-train);
- latent inner loop: `inner_unroll_length` steps (meta-test: the number of steps
  asked of `adapt`, `eval_inner_steps`) of z <- z - alpha * dL/dz, alpha learned
  per latent unit from `inner_lr_init`, L the support cross-entropy summed over
  the support examples (the reference differentiates the per-example loss vector,
  i.e. its sum), the weights decoded again after every step;
- fine-tuning: `finetuning_unroll_length` steps of w <- w - eta * dL/dw in
  parameter space, eta learned per feature from `finetuning_lr_init`;
- outer objective: query cross-entropy + `kl_weight` * KL(q(z) || N(0, I)) (the
  reference's one-sample estimate log q(z) - log p(z), averaged over units) +
  `encoder_penalty_weight` * mean (stop_gradient(z') - z)^2 (adapted code against
  the encoder's), averaged over tasks, + `l2_penalty_weight` * sum w^2 / 2 over
  encoder, relation and decoder weights + `orthogonality_penalty_weight` * mean
  (C - I)^2, C the correlation matrix of the decoder's rows (one row per latent
  unit); all exact second order;
- a meta-batch whose loss or gradient is not finite (sampled weights with a huge
  std can overflow; the reference has the same guard), over all processes, gets the gradient of
  1e-4 * sum w^2 / 2 alone (the reference's `grads_and_vars`), and logs the
  step as non-finite (the log's `nonfinite_steps`; its loss and accuracy are left out
  of the log's means);
- the trainer's Adam with `grad_clip_value` then `grad_clip_norm` per gradient tensor
  (the reference's `gradient_threshold` and `gradient_norm_threshold`, runner.py).

The architecture table of the MindSpore port's README (3-layer MLPs with 16/32/40
hidden units, decoder output 2 x 1761) describes the paper's sinusoid-regression
model; on ImageNet embeddings the reference code uses the linear encoder and
decoder above, which this file follows.

All tasks of a meta-batch run in one batched pass (they have one shape); the
classes of a task may be any number N, with the same K support examples each.
Every random draw of a task (dropout masks, latent and weight samples) comes
from the task's own generator, seeded by the task's (seed, step, position): a
task gets the same draws whichever process, and whichever other tasks, it is
computed with, so `--procs N` computes the one-process meta-gradient.
"""
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..errors import FewshotError
from . import ALGORITHMS
from .base import Algorithm

if TYPE_CHECKING:
    from ..data.episodes import Task
    from ..tasks import Family


def orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the correlation matrix of `weight`'s rows and
    the identity (the reference's `get_orthogonality_regularizer`, before its weight)."""
    norms = weight.norm(dim=1, keepdim=True) + 1e-32
    correlation = (weight @ weight.t()) / (norms @ norms.t())
    return (correlation - torch.eye(len(weight), dtype=weight.dtype, device=weight.device)).pow(2).mean()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -((x - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)


def kl_divergence(samples: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The reference's estimate of KL(N(mean, std) || N(0, 1)) from one sample per unit:
    mean over units of log q(sample) - log p(sample)."""
    zeros, ones = torch.zeros_like(samples), torch.ones_like(samples)
    return (gaussian_log_prob(samples, mean, std) - gaussian_log_prob(samples, zeros, ones)).mean()


class Noise:
    """The random draws of a meta-batch at meta-train: one generator per task, seeded
    from the task's seed (the global generator for a task without one)."""

    def __init__(self, task_seeds: list[tuple[int, ...] | None]) -> None:
        self.generators = [None if seed is None else
                           torch.Generator().manual_seed(int(np.random.default_rng([*seed, 0x1E0]).integers(2 ** 62)))
                           for seed in task_seeds]

    def _draw(self, sample, like):
        return torch.stack([sample(like.shape[1:], generator=g, dtype=like.dtype)
                            for g in self.generators]).to(like.device)

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal draws of `like`'s shape (T x ...), task t's from generator t."""
        return self._draw(torch.randn, like)

    def dropout(self, x: torch.Tensor, rate: float) -> torch.Tensor:
        if rate == 0:
            return x
        keep = self._draw(torch.rand, x) >= rate
        return x * keep / (1.0 - rate)


def split_gaussian(params: torch.Tensor, stddev_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) from the last dimension's two halves: std = max(exp(s) - (1 - offset), 1e-10)."""
    mean, unnormalized = params.chunk(2, dim=-1)
    return mean, (torch.exp(unnormalized) - (1.0 - stddev_offset)).clamp(min=1e-10)


@ALGORITHMS.register("leo")
class LEO(Algorithm):
    # eval_inner_steps: the latent steps at meta-test (inner_unroll_length at meta-train)
    reads = frozenset({"eval_inner_steps", "eval_at_steps", "num_latents", "inner_unroll_length",
                       "finetuning_unroll_length", "inner_lr_init", "finetuning_lr_init", "dropout_rate", "kl_weight",
                       "encoder_penalty_weight", "l2_penalty_weight", "orthogonality_penalty_weight"})
    skips_nonfinite_steps = True
    any_number_of_classes = True  # classifier weights are generated per class, for any N

    def __init__(self, model: nn.Module, config: Config, family: "Family") -> None:
        if config.model != "none":
            raise FewshotError(f"LEO learns on precomputed embeddings and takes no backbone; set model: none "
                               f"(got model {config.model!r}), dataset: embeddings")
        super().__init__(model, config, family)
        dim, latents = config.embedding_dim, config.num_latents
        self.dim, self.latents = dim, latents

        def glorot(fan_in, fan_out):
            return nn.Parameter(nn.init.xavier_uniform_(torch.empty(fan_in, fan_out)))

        # weights stored (in, out), as the reference's snt.Linear: rows index the inputs
        self.encoder = glorot(dim, latents)
        self.relation = nn.ParameterList([glorot(2 * latents, 2 * latents) for _ in range(3)])
        self.decoder = glorot(latents, 2 * dim)
        self.inner_lr = nn.Parameter(torch.full((latents,), float(config.inner_lr_init)))
        self.finetuning_lr = nn.Parameter(torch.full((dim,), float(config.finetuning_lr_init)))

    # the pieces ----------------------------------------------------------------
    def regularized(self) -> list[nn.Parameter]:
        """The weights under the L2 penalty (the reference's regularizers)."""
        return [self.encoder, *self.relation, self.decoder]

    def l2_penalty(self) -> torch.Tensor:
        return sum(w.pow(2).sum() for w in self.regularized()) / 2

    def orthogonality_penalty(self) -> torch.Tensor:
        return orthogonality(self.decoder)

    def dropout(self, x: torch.Tensor, noise: Noise | None) -> torch.Tensor:
        return x if noise is None else noise.dropout(x, self.config.dropout_rate)

    def encode(self, support: torch.Tensor, noise: Noise | None) -> tuple[torch.Tensor, torch.Tensor]:
        """support T x N x K x D -> (latents T x N x K x L, KL) from encoder and relation network;
        sampled with `noise` (meta-train), the means without (meta-test)."""
        t, n, k, _ = support.shape
        codes = (self.dropout(support, noise) @ self.encoder).reshape(t, n * k, self.latents)
        pairs = torch.cat([codes.unsqueeze(2).expand(t, n * k, n * k, self.latents),
                           codes.unsqueeze(1).expand(t, n * k, n * k, self.latents)], dim=-1)
        h = pairs
        for i, weight in enumerate(self.relation):
            h = h @ weight
            if i < len(self.relation) - 1:
                h = F.relu(h)
        params = h.mean(dim=2).reshape(t, n, k, 2 * self.latents).mean(dim=2, keepdim=True).expand(-1, -1, k, -1)
        mean, std = split_gaussian(params)
        if noise is None:
            return mean, params.new_zeros(())
        samples = mean + std * noise.normal(mean)
        return samples, kl_divergence(samples, mean, std)

    def decode(self, latents: torch.Tensor, noise: Noise | None) -> torch.Tensor:
        """latents T x N x K x L -> classifier weights T x N x K x D."""
        n = latents.shape[1]
        mean, std = split_gaussian(latents @ self.decoder, stddev_offset=math.sqrt(2.0 / (n + self.dim)))
        return mean if noise is None else mean + std * noise.normal(mean)

    def logits(self, x: torch.Tensor, weights: torch.Tensor, noise: Noise | None) -> torch.Tensor:
        """x T x M x D, weights T x N x K x D -> T x M x N."""
        return torch.einsum("tmd,tnkd->tmnk", self.dropout(x, noise), weights).mean(-1)

    def support_loss(self, support: torch.Tensor, weights: torch.Tensor, noise: Noise | None) -> torch.Tensor:
        """Cross-entropy summed over each task's support examples, and over tasks (so that its
        gradient with respect to a task's latents or weights is that task's own)."""
        t, n, k, d = support.shape
        labels = torch.arange(n, device=support.device).repeat_interleave(k).repeat(t)
        out = self.logits(support.reshape(t, n * k, d), weights, noise)
        return F.cross_entropy(out.reshape(t * n * k, n), labels, reduction="sum")

    # the two inner loops -------------------------------------------------------
    def inner_loops(self, support: torch.Tensor, noise: Noise | None = None, steps: int | None = None,
                    lr: float | None = None,
                    finetuning_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classifier weights after the latent and fine-tuning loops, KL, encoder penalty).
        With `noise` (meta-train), sampled and differentiable end to end (second order);
        without (meta-test), deterministic and first order."""
        training = noise is not None
        steps = self.config.inner_unroll_length if steps is None else steps
        finetuning_steps = self.config.finetuning_unroll_length if finetuning_steps is None else finetuning_steps
        inner_lr = self.inner_lr if lr is None else lr

        def step(value, loss, rate):
            if not training:
                grad, = torch.autograd.grad(loss, value)
                return (value - rate * grad).detach().requires_grad_(True)
            grad, = torch.autograd.grad(loss, value, create_graph=True)
            return value - rate * grad

        with torch.enable_grad():
            start, kl = self.encode(support, noise)
            latents = start if training else start.detach().requires_grad_(True)
            weights = self.decode(latents, noise)
            loss = self.support_loss(support, weights, noise)
            for _ in range(steps):
                latents = step(latents, loss, inner_lr)
                weights = self.decode(latents, noise)
                loss = self.support_loss(support, weights, noise)
            if not training:
                weights = weights.detach().requires_grad_(True)
                loss = self.support_loss(support, weights, noise)
            for _ in range(finetuning_steps):
                weights = step(weights, loss, self.finetuning_lr if training else self.finetuning_lr.detach())
                loss = self.support_loss(support, weights, noise)
        penalty = (latents.detach() - start).pow(2).mean() if training else start.new_zeros(())
        return weights, kl, penalty

    # the interface -----------------------------------------------------------
    def group(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """support N*K x D (labels 0..N-1, K each, any order) -> N x K x D, L2-normalized."""
        n = int(support_y.max()) + 1
        counts = torch.bincount(support_y, minlength=n)
        if (counts != counts[0]).any() or counts[0] == 0:
            raise FewshotError(f"LEO needs the same number of support examples in every class, got "
                               f"{counts.tolist()}")
        order = torch.argsort(support_y, stable=True)
        return F.normalize(support_x[order], dim=-1).reshape(n, int(counts[0]), -1)

    def check_dim(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise FewshotError(f"LEO was built for {self.dim}-dimensional embeddings (embedding_dim) but got "
                               f"inputs of shape {tuple(x.shape)}; use the dataset `embeddings` with files of "
                               f"that dimension")

    def meta_gradient(self, tasks: list["Task"], step: int = 0) -> dict[str, float | torch.Tensor]:
        self.check_dim(tasks[0].support_x)
        if len({(t.support_x.shape, t.query_x.shape) for t in tasks}) != 1:
            raise FewshotError("LEO runs a meta-batch in one pass; its tasks must have one shape")
        support = torch.stack([self.group(t.support_x, t.support_y) for t in tasks])
        query = F.normalize(torch.stack([t.query_x for t in tasks]), dim=-1)
        query_y = torch.stack([t.query_y for t in tasks])
        noise = Noise([t.seed for t in tasks])
        weights, kl, encoder_penalty = self.inner_loops(support, noise)
        out = self.logits(query, weights, noise)
        query_loss = F.cross_entropy(out.flatten(0, 1), query_y.flatten())
        config = self.config
        total = (query_loss + config.kl_weight * kl + config.encoder_penalty_weight * encoder_penalty
                 + config.l2_penalty_weight * self.l2_penalty()
                 + config.orthogonality_penalty_weight * self.orthogonality_penalty())
        total.backward()
        out = out.detach()
        metric = sum(self.family.metric(out[i], query_y[i]) for i in range(len(tasks))) / len(tasks)
        finite = torch.isfinite(total).item()  # a non-finite gradient alone shows in finish_meta_gradient
        return {"loss": query_loss.item() if finite else float("nan"), self.family.metric_name: metric}

    def finish_meta_gradient(self, result: dict[str, float | torch.Tensor]) -> dict[str, float | torch.Tensor]:
        """The reference's guard, on the whole meta-batch (after the processes' shares are
        summed, so that one task's overflow sends every process to the same fallback)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if math.isfinite(result["loss"]) and all(torch.isfinite(g).all() for g in grads):
            return result
        self.regularization_only_gradient()
        return {**result, "loss": float("nan"), self.family.metric_name: float("nan")}  # counted, not averaged

    def regularization_only_gradient(self) -> None:
        """The gradient of 1e-4 * sum w^2 / 2 over the regularized weights, zero elsewhere."""
        regularized = {id(w) for w in self.regularized()}
        for p in self.parameters():
            p.grad = 1e-4 * p.detach().clone() if id(p) in regularized else torch.zeros_like(p)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        self.check_dim(support_x)
        steps = self.config.eval_inner_steps if steps is None else steps
        weights, _, _ = self.inner_loops(self.group(support_x, support_y).unsqueeze(0), steps=steps, lr=lr)
        return {"weights": weights.detach()}

    @torch.no_grad()
    def predict(self, adapted: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.logits(F.normalize(x, dim=-1).unsqueeze(0), adapted["weights"], None)[0]

    def describe_inner_lr(self) -> str:
        return (f"learned (latent: mean {self.inner_lr.mean().item():.4g} over {self.latents} units; "
                f"fine-tuning: mean {self.finetuning_lr.mean().item():.4g} over {self.dim} features, "
                f"{self.config.finetuning_unroll_length} steps)")
