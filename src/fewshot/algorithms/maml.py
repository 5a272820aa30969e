"""MAML (Finn et al. 2017), exact second order, and its first-order approximation.

Inner loop: `inner_steps` steps of SGD with `inner_lr` on the support loss, on a
dict of tensors derived from the meta-parameters. With `first_order`, the inner
gradients are taken as constants (no create_graph), which makes the adapted
weights' Jacobian the identity: FOMAML's meta-gradient is the query-loss
gradient at the adapted weights, reached by the same backward call.

Two exact ways to run a meta-batch, with the same meta-gradient:
  per-task loop  each task's query loss is backpropagated on its own, so only one
                 task's graph is alive at a time: peak memory does not grow with
                 the meta-batch;
  batched        all tasks (or `tasks_per_pass` at a time) in one pass: every task
                 gets its own view of the meta-parameters (expand) and the model's
                 `batched_forward` runs the tasks side by side, so a meta-step is a
                 few large operator calls instead of many small ones.
`batch_tasks` chooses (None: the measured rule in `batching_pays`).

The MAML family extends this class through five small hooks, which both ways
call: which parameters the inner loop adapts (ANIL), the step size of each
parameter at each step (Meta-SGD, MAML++), the forward pass at inner step k
(MAML++'s per-step batch norm), whether the step is second order (MAML++'s
derivative-order annealing) and the weights of the query losses along the inner
trajectory (MAML++'s multi-step loss).
"""
import torch

from ..config import eval_inner_lr
from . import ALGORITHMS
from .base import Algorithm


@ALGORITHMS.register("maml")
class MAML(Algorithm):
    # hooks ------------------------------------------------------------------
    def adapts(self, name):
        """Whether the inner loop adapts parameter `name`."""
        return True

    def step_size(self, name, k, training=True):
        return self.config.inner_lr if training else eval_inner_lr(self.config)

    def forward(self, params, x, k=0, bn_training=True, tasks=False):
        """The network at inner step k. With `tasks`, x has a leading task dimension,
        so do the per-task parameters, and each task is normalized on its own."""
        if tasks:
            return self.model.batched_forward(params, x, bn_training)
        return self.model.functional_forward(params, x, bn_training)

    def second_order(self, step):
        return not self.config.first_order

    def loss_weights(self, step):
        """Weight of the query loss after each of the inner steps 1..K in the
        meta-objective; MAML counts the last only."""
        return [0.0] * (self.config.inner_steps - 1) + [1.0]

    # the inner loop ---------------------------------------------------------
    def inner_step(self, params, x, y, k, lr, create_graph, training=True, tasks=False):
        out = self.forward(params, x, k, bn_training=training, tasks=tasks)
        if tasks:
            # a mean over equally sized tasks, times their number: the sum of the per-task
            # losses, whose gradient with respect to a task's view is that task's own gradient
            loss = self.family.loss(out.flatten(0, 1), y.flatten(0, 1)) * len(x)
        else:
            loss = self.family.loss(out, y)
        names = [n for n in params if self.adapts(n)]
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        new = dict(params)
        for name, grad in zip(names, grads):
            new[name] = params[name] - (self.step_size(name, k, training) if lr is None else lr) * grad
        return new

    def inner_loop(self, params, x, y, steps, lr=None, create_graph=True):
        for k in range(steps):
            params = self.inner_step(params, x, y, k, lr, create_graph)
        return params

    def meta_parameters(self):
        return dict(self.model.named_parameters())

    def objective(self, support_x, support_y, query_x, query_y, step, tasks=False):
        """(meta-objective, query outputs after the last inner step), differentiable with
        respect to the meta-parameters: one task's, or with `tasks` the mean over a
        stack of equally shaped tasks (leading task dimension)."""
        params = self.meta_parameters()
        if tasks:  # adapted parameters get a view per task; the others stay shared
            params = {n: p.unsqueeze(0).expand(len(support_x), *p.shape) if self.adapts(n) else p
                      for n, p in params.items()}
        query_loss = ((lambda out: self.family.loss(out.flatten(0, 1), query_y.flatten(0, 1))) if tasks else
                      (lambda out: self.family.loss(out, query_y)))
        steps = self.config.inner_steps
        if steps == 0:
            query_out = self.forward(params, query_x, 0, tasks=tasks)
            return query_loss(query_out), query_out
        create_graph = self.second_order(step)
        total = 0.0
        for k, weight in enumerate(self.loss_weights(step)):
            params = self.inner_step(params, support_x, support_y, k, None, create_graph, tasks=tasks)
            if weight > 0:
                query_out = self.forward(params, query_x, k, tasks=tasks)
                total = total + weight * query_loss(query_out)
        return total, query_out

    def task_objective(self, task, step):
        """(meta-objective, query outputs) of one task."""
        return self.objective(task.support_x, task.support_y, task.query_x, task.query_y, step)

    # the meta-gradient --------------------------------------------------------
    def batches_tasks(self, tasks):
        """Whether to run the tasks in batched passes: the model can (`can_batch_tasks`:
        its `batched_forward` gives each task its own forward), the tasks have one
        shape, and `batch_tasks` asks for it (None: `batching_pays`)."""
        if not self.model.can_batch_tasks:
            return False
        if len({(t.support_x.shape, t.query_x.shape) for t in tasks}) != 1:
            return False
        wanted = self.config.batch_tasks
        return self.batching_pays(tasks) if wanted is None else bool(wanted)

    def batching_pays(self, tasks):
        """The default (`batch_tasks: null`), as measured in docs/benchmarks.md
        ("Making the meta-step faster: all tasks in one pass"): always on CUDA; on the
        CPU where the model says its batched pass is faster for tasks of this shape at
        this many threads."""
        if tasks[0].support_x.device.type == "cuda":
            return True
        return self.model.batching_pays_on_cpu(tasks[0], torch.get_num_threads())

    def meta_gradient(self, tasks, step=0):
        """Metrics come back as 0-dim detached tensors: reading them (float()) waits for
        the device, so the trainer does it only when it logs."""
        if self.batches_tasks(tasks):
            return self.batched_meta_gradient(tasks, step)
        loss_sum = metric_sum = 0.0
        for task in tasks:
            query_loss, query_out = self.task_objective(task, step)
            (query_loss / len(tasks)).backward()
            loss_sum = loss_sum + query_loss.detach()
            metric_sum = metric_sum + self.family.metric_tensor(query_out.detach(), task.query_y)
        return {"loss": loss_sum / len(tasks), self.family.metric_name: metric_sum / len(tasks)}

    def batched_meta_gradient(self, tasks, step=0):
        """The meta-batch in passes of at most `tasks_per_pass` tasks; each pass's mean
        objective is weighted by its share of the meta-batch, so the accumulated
        gradient is the whole meta-batch's mean."""
        per_pass = self.config.tasks_per_pass or len(tasks)
        loss_sum = metric_sum = 0.0
        for start in range(0, len(tasks), per_pass):
            part = tasks[start:start + per_pass]
            share = len(part) / len(tasks)
            support_x, support_y, query_x, query_y = (torch.stack([getattr(t, name) for t in part]) for name in
                                                      ("support_x", "support_y", "query_x", "query_y"))
            objective, query_out = self.objective(support_x, support_y, query_x, query_y, step, tasks=True)
            (objective * share).backward()
            self.model.update_running_statistics()  # inductive batch norm, as the loop updates it
            loss_sum = loss_sum + objective.detach() * share
            metric_sum = metric_sum + self.family.metric_tensor(query_out.detach(), query_y) * share
        return {"loss": loss_sum, self.family.metric_name: metric_sum}

    # meta-test --------------------------------------------------------------
    def adapt(self, support_x, support_y, steps=None, lr=None):
        steps = self.config.eval_inner_steps if steps is None else steps
        params = {n: p.detach().requires_grad_(self.adapts(n)) for n, p in self.meta_parameters().items()}
        with torch.enable_grad():
            for k in range(steps):
                params = self.inner_step(params, support_x, support_y, k, lr, create_graph=False, training=False)
                params = {n: p.detach().requires_grad_(self.adapts(n)) for n, p in params.items()}
        return {"params": {n: p.detach() for n, p in params.items()}, "steps": steps}

    @torch.no_grad()
    def predict(self, adapted, x):
        return self.forward(adapted["params"], x, adapted["steps"], bn_training=False)
