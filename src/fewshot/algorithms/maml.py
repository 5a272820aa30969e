"""MAML (Finn et al. 2017), exact second order, and its first-order approximation.

Inner loop: `inner_steps` steps of SGD with `inner_lr` on the support loss, on a
dict of tensors derived from the meta-parameters. With `first_order`, the inner
gradients are taken as constants (no create_graph), which makes the adapted
weights' Jacobian the identity: FOMAML's meta-gradient is the query-loss
gradient at the adapted weights, reached by the same backward call.

Each task's query loss is backpropagated on its own, so only one task's graph is
alive at a time: peak memory does not grow with the meta-batch.

The MAML family extends this class through four small hooks: which parameters
the inner loop adapts (ANIL), the step size of each parameter at each step
(Meta-SGD, MAML++), the forward pass at inner step k (MAML++'s per-step batch
norm), and the meta-objective over the inner trajectory (MAML++).
"""
import torch

from ..config import eval_inner_lr
from . import register
from .base import Algorithm


@register("maml")
class MAML(Algorithm):
    # hooks ------------------------------------------------------------------
    def adapts(self, name):
        """Whether the inner loop adapts parameter `name`."""
        return True

    def step_size(self, name, k, training=True):
        return self.config["inner_lr"] if training else eval_inner_lr(self.config)

    def forward(self, params, x, k=0, bn_training=True):
        return self.model.functional_forward(params, x, bn_training)

    def second_order(self, step):
        return not self.config["first_order"]

    # the inner loop ---------------------------------------------------------
    def inner_step(self, params, x, y, k, lr, create_graph, training=True):
        loss = self.family.loss(self.forward(params, x, k, bn_training=training), y)
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

    def batches_tasks(self, tasks):
        """Whether to run all tasks in one batched pass: the model can (an MLP, or conv4
        with transductive batch norm), the config asks for it (`batch_tasks`; None
        means yes for MLPs, no for conv4, where it pays only for small tasks, see
        docs/benchmarks.md), the tasks have one shape, and no subclass changes the
        per-task objective."""
        wanted = self.config["batch_tasks"]
        if wanted is None:
            wanted = not hasattr(self.model, "blocks")
        return (wanted and getattr(self.model, "can_batch_tasks", False) and hasattr(self.model, "batched_forward")
                and type(self).task_objective is MAML.task_objective
                and len({(t.support_x.shape, t.query_x.shape) for t in tasks}) == 1)

    def meta_gradient(self, tasks, step=0):
        if self.batches_tasks(tasks):
            return self.batched_meta_gradient(tasks, step)
        loss_sum = metric_sum = 0.0
        for task in tasks:
            query_loss, query_out = self.task_objective(task, step)
            (query_loss / len(tasks)).backward()
            loss_sum += query_loss.item()
            metric_sum += self.family.metric(query_out.detach(), task.query_y)
        return {"loss": loss_sum / len(tasks), self.family.metric_name: metric_sum / len(tasks)}

    def task_objective(self, task, step):
        """(query loss after adaptation, query outputs) for one task, differentiable
        with respect to the meta-parameters."""
        steps = self.config["inner_steps"]
        fast = self.inner_loop(self.meta_parameters(), task.support_x, task.support_y, steps,
                               create_graph=self.second_order(step))
        query_out = self.forward(fast, task.query_x, steps)
        return self.family.loss(query_out, task.query_y), query_out

    def batched_meta_gradient(self, tasks, step=0):
        """All tasks in one pass, for models with a `batched_forward`. Each task gets
        its own view of the meta-parameters (expand): the gradient of the summed
        support losses with respect to those views is every task's own gradient."""
        stack = lambda name: torch.stack([getattr(t, name) for t in tasks])
        support_x, support_y, query_x, query_y = map(stack, ("support_x", "support_y", "query_x", "query_y"))
        count = len(tasks)
        params = {n: p.unsqueeze(0).expand(count, *p.shape) for n, p in self.meta_parameters().items()}
        names = [n for n in params if self.adapts(n)]
        for k in range(self.config["inner_steps"]):
            # a mean over equally sized tasks, times their number: the sum of per-task losses
            loss = count * self.family.loss(self.model.batched_forward(params, support_x).flatten(0, 1),
                                            support_y.flatten(0, 1))
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=self.second_order(step))
            params = dict(params)
            for name, grad in zip(names, grads):
                params[name] = params[name] - self.step_size(name, k) * grad
        query_out = self.model.batched_forward(params, query_x)
        query_loss = self.family.loss(query_out.flatten(0, 1), query_y.flatten(0, 1))
        query_loss.backward()
        query_out = query_out.detach()
        metric = sum(self.family.metric(query_out[i], query_y[i]) for i in range(count)) / count
        return {"loss": query_loss.item(), self.family.metric_name: metric}

    # meta-test --------------------------------------------------------------
    def adapt(self, support_x, support_y, steps=None, lr=None):
        steps = self.config["eval_inner_steps"] if steps is None else steps
        params = {n: p.detach().requires_grad_(self.adapts(n)) for n, p in self.meta_parameters().items()}
        with torch.enable_grad():
            for k in range(steps):
                params = self.inner_step(params, support_x, support_y, k, lr, create_graph=False, training=False)
                params = {n: p.detach().requires_grad_(self.adapts(n)) for n, p in params.items()}
        return {"params": {n: p.detach() for n, p in params.items()}, "steps": steps}

    @torch.no_grad()
    def predict(self, adapted, x):
        return self.forward(adapted["params"], x, adapted["steps"], bn_training=False)
