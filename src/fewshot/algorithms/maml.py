"""MAML (Finn et al. 2017), exact second order, and its first-order approximation.

Inner loop: `inner_steps` steps of SGD with `inner_lr` on the support loss, on a
dict of tensors derived from the meta-parameters. With `first_order`, the inner
gradients are taken as constants (no create_graph), which makes the adapted
weights' Jacobian the identity: FOMAML's meta-gradient is the query-loss
gradient at the adapted weights, reached by the same backward call.

A meta-step, top to bottom in this file: `meta_gradient` runs the meta-batch in
passes, `objective` is a pass's meta-objective (the inner loop of `inner_step`s,
then the query loss), and `forward_at` runs the backbone with the adapted tensors
(`functional_forward`). Two exact ways to run a meta-batch, with the same
meta-gradient:
  per-task loop  each task's query loss is backpropagated on its own, so only one
                 task's graph is alive at a time: peak memory does not grow with
                 the meta-batch;
  batched        all tasks (or `tasks_per_pass` at a time) in one pass: every task
                 gets its own view of the meta-parameters (expand) and the model's
                 `tasks_forward` runs the tasks side by side, so a meta-step is a
                 few large operator calls instead of many small ones.
`batch_tasks` chooses (None: the measured rule in `batches_tasks`).

The MAML family extends this class through small hooks, which both ways call:
which parameters the inner loop adapts (ANIL), what its forwards start from and run
(`inner_inputs`, `inner_forward`: ANIL's body features once per task, then the head
alone), the step size of each parameter at each step (Meta-SGD, MAML++), the forward
pass at inner step k (MAML++'s per-step batch norm), whether the step is second
order (MAML++'s derivative-order annealing) and the weights of the query losses
along the inner trajectory (MAML++'s multi-step loss).
"""
from typing import TYPE_CHECKING, Any

import torch

from ..config import eval_inner_lr
from . import ALGORITHMS
from .base import Algorithm

if TYPE_CHECKING:
    from ..data.episodes import Task


@ALGORITHMS.register("maml")
class MAML(Algorithm):
    reads = frozenset({"inner_steps", "inner_lr", "eval_inner_steps", "eval_inner_lr", "eval_at_steps", "first_order",
                       "batch_tasks", "tasks_per_pass", "loss_reduction", "adapt_bn"})

    # the meta-step ------------------------------------------------------------
    def meta_gradient(self, tasks: list["Task"], step: int = 0) -> dict[str, float | torch.Tensor]:
        """Add the mean meta-gradient over `tasks` to .grad. The tasks run one at a time, or
        stacked in passes of `tasks_per_pass` where `batches_tasks`; each pass's mean
        objective is weighted by its share of the meta-batch, so the accumulated gradient
        is the whole meta-batch's mean. Metrics come back as 0-dim detached tensors:
        reading them (float()) waits for the device, so the trainer does it only when it logs."""
        batched = self.batches_tasks(tasks)
        per_pass = (self.config.tasks_per_pass or len(tasks)) if batched else 1
        loss_sum = metric_sum = 0.0
        for start in range(0, len(tasks), per_pass):
            part = tasks[start:start + per_pass]
            support_x, support_y, query_x, query_y = (
                torch.stack([getattr(t, name) for t in part]) if batched else getattr(part[0], name)
                for name in ("support_x", "support_y", "query_x", "query_y"))
            share = len(part) / len(tasks)
            objective, query_out = self.objective(support_x, support_y, query_x, query_y, step, tasks=batched)
            (objective * share).backward()
            self.model.update_running_statistics()  # batched inductive batch norm, in the loop's order
            loss_sum = loss_sum + objective.detach() * share
            metric_sum = metric_sum + self.family.metric_tensor(query_out.detach(), query_y) * share
        return {"loss": loss_sum, self.family.metric_name: metric_sum}

    def batches_tasks(self, tasks: list["Task"]) -> bool:
        """Whether the tasks run stacked: the model can (`can_batch_tasks`: its
        `tasks_forward` gives each task its own forward), the tasks have one shape, and
        `batch_tasks` asks for it. Its default (null), as measured in docs/benchmarks.md
        ("Making the meta-step faster: all tasks in one pass"): always on CUDA; on the CPU
        where the model says its batched pass is faster for tasks of this shape at this
        many threads."""
        if not self.model.can_batch_tasks or len({(t.support_x.shape, t.query_x.shape) for t in tasks}) != 1:
            return False
        if self.config.batch_tasks is not None:
            return self.config.batch_tasks
        return (tasks[0].support_x.device.type == "cuda" or
                self.model.batching_pays_on_cpu(tasks[0], torch.get_num_threads()))

    def objective(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                  query_y: torch.Tensor, step: int, tasks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(meta-objective, query outputs after the last inner step), differentiable with
        respect to the meta-parameters: one task's, or with `tasks` the mean over a
        stack of equally shaped tasks (leading task dimension)."""
        params = self.meta_parameters()
        if tasks:  # adapted parameters get a view per task; the others stay shared
            params = {n: p.unsqueeze(0).expand(len(support_x), *p.shape) if self.adapts(n) else p
                      for n, p in params.items()}
        scale = self.loss_scale(query_y.shape[int(tasks)], support_y.shape[int(tasks)])
        query_loss = ((lambda out: self.family.loss(out.flatten(0, 1), query_y.flatten(0, 1)) * scale) if tasks else
                      (lambda out: self.family.loss(out, query_y) * scale))
        steps = self.config.inner_steps
        support_in, query_in = (self.inner_inputs(params, x, tasks=tasks) for x in (support_x, query_x))
        if steps == 0:
            query_out = self.inner_forward(params, query_in, 0, tasks=tasks)
            return query_loss(query_out), query_out
        create_graph = self.second_order(step)
        total = 0.0
        for k, weight in enumerate(self.loss_weights(step)):
            params = self.inner_step(params, support_in, support_y, k, None, create_graph, tasks=tasks)
            if weight > 0:
                query_out = self.inner_forward(params, query_in, k, tasks=tasks)
                total = total + weight * query_loss(query_out)
        return total, query_out

    def inner_step(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, k: int, lr: float | None,
                   create_graph: bool, training: bool = True, tasks: bool = False) -> dict[str, torch.Tensor]:
        """`params` after inner step k on the support set (x: its `inner_inputs`, y): adapted
        tensors move against their support-loss gradient, the others stay."""
        out = self.inner_forward(params, x, k, bn_training=training, tasks=tasks)
        if tasks:
            # a mean over equally sized tasks, times their number: the sum of the per-task
            # losses, whose gradient with respect to a task's view is that task's own gradient
            loss = self.family.loss(out.flatten(0, 1), y.flatten(0, 1)) * len(x)
        else:
            loss = self.family.loss(out, y)
        loss = loss * self.loss_scale(1, 1)  # the support set's own: ways x the mean, or 1
        names = [n for n in params if self.adapts(n)]
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        new = dict(params)
        for name, grad in zip(names, grads):
            new[name] = params[name] - (self.step_size(name, k, training) if lr is None else lr) * grad
        return new

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    # hooks ------------------------------------------------------------------
    def adapts(self, name: str) -> bool:
        """Whether the inner loop adapts parameter `name` (batch norm's only with `adapt_bn`)."""
        return self.config.adapt_bn or self.parameter_roles[name] != "batch_norm"

    def step_size(self, name: str, k: int, training: bool = True) -> float | torch.Tensor:
        return self.config.inner_lr if training else eval_inner_lr(self.config)

    def forward_at(self, params: dict[str, torch.Tensor], x: torch.Tensor, k: int = 0, bn_training: bool = True,
                   tasks: bool = False) -> torch.Tensor:
        """The network with `params` at inner step k. With `tasks`, x has a leading task
        dimension, so do the per-task parameters, and each task is normalized on its own."""
        return self.model.functional_forward(params, x, bn_training, tasks=tasks)

    def inner_inputs(self, params: dict[str, torch.Tensor], x: torch.Tensor, bn_training: bool = True,
                     tasks: bool = False) -> torch.Tensor:
        """What the inner loop's forwards start from, made once per task from images `x`:
        the images themselves (`inner_forward` runs the whole network at each step)."""
        return x

    def inner_forward(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, k: int = 0,
                      bn_training: bool = True, tasks: bool = False) -> torch.Tensor:
        """The outputs at inner step k from `inner_inputs`: the network at step k."""
        return self.forward_at(params, inputs, k, bn_training=bn_training, tasks=tasks)

    def second_order(self, step: int) -> bool:
        return not self.config.first_order

    def loss_weights(self, step: int) -> list[float]:
        """Weight of the query loss after each of the inner steps 1..K in the
        meta-objective; MAML counts the last only."""
        return [0.0] * (self.config.inner_steps - 1) + [1.0]

    def loss_scale(self, examples: int, support_examples: int) -> float:
        """The task's loss on a set of `examples` over their mean per-example loss.
        `loss_reduction: sum_div_shots` is cbfinn/maml's xent: each example's loss / shots,
        summed (tf.gradients of the vector in the inner loop, reduce_sum in the
        meta-objective), shots being the support set's examples per class; the support
        loss is then `ways` x the mean."""
        if self.config.loss_reduction == "mean":
            return 1.0
        return examples * self.config.ways / support_examples

    # meta-test --------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None) -> dict[str, Any]:
        steps = self.config.eval_inner_steps if steps is None else steps
        params = {n: p.detach().requires_grad_(self.adapts(n)) for n, p in self.meta_parameters().items()}
        with torch.enable_grad():
            support_in = self.inner_inputs(params, support_x, bn_training=False) if steps else None
            for k in range(steps):
                params = self.inner_step(params, support_in, support_y, k, lr, create_graph=False, training=False)
                params = {n: p.detach().requires_grad_(self.adapts(n)) for n, p in params.items()}
        return {"params": {n: p.detach() for n, p in params.items()}, "steps": steps}

    @staticmethod
    def last_step(steps: int) -> int:
        """The inner step k whose network makes the query pass after `steps` inner steps: the
        last one, k = steps - 1 (step 0 for none), as `objective` scores it (MAML++'s per-step
        batch norm; the plain network is the same at every k)."""
        return max(steps - 1, 0)

    @torch.no_grad()
    def predict(self, adapted: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        return self.forward_at(adapted["params"], x, self.last_step(adapted["steps"]), bn_training=False)
