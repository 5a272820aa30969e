"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Inner loop: `inner_steps` steps of SGD or Adam (betas 0, 0.999, as in the authors'
code) on mini-batches of `inner_batch` of the task's examples; at meta-train a
task's examples are its support and query sets together ("train shots"). At
meta-test, `eval_inner_steps` steps on mini-batches of `eval_inner_batch` support
examples (the reference's --eval-iters and --eval-batch; null: `inner_batch`).
Meta-update: theta <- theta + epsilon * (mean adapted weights - theta). It is handed
to the trainer's optimizer as the gradient (theta - mean adapted weights), so SGD
with lr = epsilon (`meta_optimizer: sgd`, `meta_lr`, linearly annealed) takes
exactly that step.

Mini-batches follow openai/supervised-reptile's `_mini_batches`: the examples are
reshuffled at every pass over them and a partial batch carries over into the next
pass, so every example is used (a batch larger than the task holds some twice, as
there). The shuffles come from the task's seed: (seed, step, position) at
meta-train, `eval_seed` at meta-test.

Inner Adam state, as in the reference: between the tasks of a meta-batch it
restores only the trainable variables (`_model_state`), so Adam's second moments
and step count carry over from task to task and from meta-step to meta-step during
meta-training; evaluation saves and restores everything (`_full_state`), so each
meta-test task starts from the moments meta-training left and changes nothing.
The state lives in this module's buffers (`inner_adam.*`), so checkpoints hold it
and a resumed run continues it exactly. With beta1 = 0 the first moment is the
gradient itself and is not stored. Under `--procs N` each process carries the
state of its own share of the tasks (the reference runs one process), and rank 0's
is saved.

Batch norm. `transductive` (the default, and the reference, whose moving
statistics are never updated): every forward uses batch statistics. `inductive`:
the meta-train inner loop uses batch statistics and updates the running statistics
at every step, as MAML's inductive mode does; at meta-test the inner loop and the
predictions use the running statistics and update nothing, so a query's prediction
does not depend on the other queries.

Evaluation with transductive batch norm: `reptile_eval: transductive` classifies
all query images in one batch (batch-norm statistics over the query batch);
`non_transductive` classifies each query image in a batch with the support images
only, so no query image sees another. With inductive batch norm both are the same.
"""
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from . import ALGORITHMS
from .base import Algorithm

if TYPE_CHECKING:
    from ..data.episodes import Task
    from ..tasks import Family

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


def mini_batches(count: int, batch_size: int, batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of `batches` mini-batches of `batch_size` out of `count` examples:
    a fresh permutation for every pass, a partial batch carried into the next pass."""
    rows, current = [], []
    while len(rows) < batches:
        for index in rng.permutation(count):
            current.append(index)
            if len(current) == batch_size:
                rows.append(np.array(current))
                current = []
                if len(rows) == batches:
                    break
    return rows


class InnerAdamState(nn.Module):
    """The inner Adam's step count and second moments, kept as buffers so that
    `state_dict()`, and so checkpoints, hold them."""

    def __init__(self, parameters: dict) -> None:
        super().__init__()
        self.names = list(parameters)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        for name, p in parameters.items():
            self.register_buffer(self.key(name), torch.zeros_like(p.detach()))

    @staticmethod
    def key(name: str) -> str:
        return "exp_avg_sq_" + name.replace(".", "_")  # buffer names cannot hold dots

    def read(self) -> dict:
        """A copy: {"step": int, "exp_avg_sq": {parameter name: tensor}}."""
        return {"step": int(self.step), "exp_avg_sq": {n: getattr(self, self.key(n)).clone() for n in self.names}}

    def write(self, state: dict) -> None:
        self.step.fill_(state["step"])
        for name in self.names:
            getattr(self, self.key(name)).copy_(state["exp_avg_sq"][name])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not any(key.startswith(prefix) for key in state_dict):
            for buffer in self.buffers():  # a checkpoint from before the state was kept: a fresh state
                buffer.zero_()
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@ALGORITHMS.register("reptile")
class Reptile(Algorithm):
    reads = frozenset({"inner_steps", "inner_lr", "eval_inner_steps", "eval_inner_lr", "eval_at_steps",
                       "inner_optimizer", "inner_batch", "eval_inner_batch", "reptile_eval"})

    @property
    def predicts_each_input_alone(self) -> bool:  # each query in a batch with the support images only
        return self.config.reptile_eval == "non_transductive"
    optimizer_state_prefixes = ("inner_adam.",)

    def __init__(self, model: nn.Module, config: Config, family: "Family") -> None:
        super().__init__(model, config, family)
        if config.inner_optimizer == "adam":
            self.inner_adam = InnerAdamState(dict(model.named_parameters()))

    def train_on(self, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: list[int],
                 batch_size: int | None = None, adam: dict[str, Any] | None = None,
                 bn_training: bool = True) -> dict[str, torch.Tensor]:
        """Adapted weights after `steps` inner steps on mini-batches of `batch_size` rows of
        (x, y) (None: all of them); no graph is kept.
        `adam` is the inner Adam state to start from, a dict as InnerAdamState.read()
        gives, updated in place (None: a fresh one)."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        if self.config.inner_optimizer == "adam" and adam is None:
            adam = {"step": 0, "exp_avg_sq": {n: torch.zeros_like(p) for n, p in params.items()}}
        for rows in mini_batches(len(x), batch_size or len(x), steps, np.random.default_rng(seed)):
            rows = torch.from_numpy(rows).to(x.device)
            params = {n: p.requires_grad_() for n, p in params.items()}
            with torch.enable_grad():
                loss = self.family.loss(self.model.functional_forward(params, x[rows], bn_training), y[rows])
                grads = dict(zip(params, torch.autograd.grad(loss, tuple(params.values()))))
            with torch.no_grad():
                if self.config.inner_optimizer == "adam":
                    params = adam_step(params, grads, adam, lr)
                else:
                    params = {n: p - lr * grads[n] for n, p in params.items()}
        return {n: p.detach() for n, p in params.items()}

    def meta_gradient(self, tasks: list["Task"], step: int = 0) -> dict[str, float | torch.Tensor]:
        meta = dict(self.model.named_parameters())
        # one state for the whole meta-batch: it carries over from task to task
        adam = self.inner_adam.read() if self.config.inner_optimizer == "adam" else None
        loss_sum = metric_sum = 0.0
        for position, task in enumerate(tasks):
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            adapted = self.train_on(x, y, self.config.inner_steps, self.config.inner_lr,
                                    [self.config.seed, step, position], self.config.inner_batch, adam=adam,
                                    bn_training=True)
            for name, p in meta.items():
                delta = (p.detach() - adapted[name]) / len(tasks)
                p.grad = delta if p.grad is None else p.grad + delta
            with torch.no_grad():  # the log's figures, normalized as at meta-test (no running-statistics update)
                out = self.model.functional_forward(adapted, x, False)
                loss_sum += self.family.loss(out, y).item()
                metric_sum += self.family.metric(out, y)
        if adam is not None:
            self.inner_adam.write(adam)
        return {"loss": loss_sum / len(tasks), self.family.metric_name: metric_sum / len(tasks)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None) -> dict[str, Any]:
        steps = self.config.eval_inner_steps if steps is None else steps
        lr = self.describe_inner_lr() if lr is None else lr
        # a copy of the meta-trained Adam state: evaluation leaves it as it was
        adam = self.inner_adam.read() if self.config.inner_optimizer == "adam" else None
        batch_size = self.config.eval_inner_batch or self.config.inner_batch
        params = self.train_on(support_x, support_y, steps, lr, [self.config.eval_seed], batch_size, adam=adam,
                               bn_training=False)
        return {"params": params, "support_x": support_x}

    @torch.no_grad()
    def predict(self, adapted: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        params = adapted["params"]
        # inductive batch norm: running statistics, so every row is on its own already
        if self.config.reptile_eval == "transductive" or self.model.batch_norm_mode != "transductive":
            return self.model.functional_forward(params, x, False)
        support = adapted["support_x"]
        return torch.cat([self.model.functional_forward(params, torch.cat([support, x[i:i + 1]]), False)[-1:]
                          for i in range(len(x))])


def adam_step(params: dict, grads: dict, state: dict, lr: float) -> dict:
    """One step of Adam with beta1 = 0 (the first moment is the gradient), as
    torch.optim.Adam computes it; `state` is updated in place."""
    state["step"] += 1
    correction = (1 - ADAM_BETA2 ** state["step"]) ** 0.5
    new = {}
    for name, p in params.items():
        grad = grads[name]
        state["exp_avg_sq"][name] = state["exp_avg_sq"][name] * ADAM_BETA2 + (1 - ADAM_BETA2) * grad * grad
        new[name] = p - lr * (grad / (state["exp_avg_sq"][name].sqrt() / correction + ADAM_EPS))
    return new
