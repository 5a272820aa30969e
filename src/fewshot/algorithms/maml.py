"""MAML (Finn et al. 2017), exact second order, and its first-order approximation.

Inner loop: `inner_steps` steps of SGD with `inner_lr` on the support loss, on a
dict of tensors derived from the meta-parameters. With `first_order`, the inner
gradients are taken as constants (no create_graph), which makes the adapted
weights' Jacobian the identity: FOMAML's meta-gradient is the query-loss
gradient at the adapted weights, reached by the same backward call.

Each task's query loss is backpropagated on its own, so only one task's graph is
alive at a time: peak memory does not grow with the meta-batch.
"""
import torch

from ..config import eval_inner_lr
from . import register
from .base import Algorithm


@register("maml")
class MAML(Algorithm):
    def inner_loop(self, params, x, y, steps, lr, create_graph):
        for _ in range(steps):
            loss = self.family.loss(self.model.functional_forward(params, x), y)
            grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
            params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
        return params

    def meta_gradient(self, tasks):
        if hasattr(self.model, "batched_forward") and len({t.support_x.shape for t in tasks}) == 1:
            return self.batched_meta_gradient(tasks)
        meta_params = dict(self.model.named_parameters())
        second_order = not self.config["first_order"]
        loss_sum = metric_sum = 0.0
        for task in tasks:
            fast = self.inner_loop(meta_params, task.support_x, task.support_y,
                                   self.config["inner_steps"], self.config["inner_lr"], second_order)
            query_out = self.model.functional_forward(fast, task.query_x)
            query_loss = self.family.loss(query_out, task.query_y)
            (query_loss / len(tasks)).backward()
            loss_sum += query_loss.item()
            metric_sum += self.family.metric(query_out.detach(), task.query_y)
        return {"loss": loss_sum / len(tasks), self.family.metric_name: metric_sum / len(tasks)}

    def batched_meta_gradient(self, tasks):
        """All tasks in one pass, for models with a `batched_forward`. Each task gets
        its own view of the meta-parameters (expand): the gradient of the summed
        support losses with respect to those views is every task's own gradient."""
        stack = lambda name: torch.stack([getattr(t, name) for t in tasks])
        support_x, support_y, query_x, query_y = map(stack, ("support_x", "support_y", "query_x", "query_y"))
        count = len(tasks)
        params = {n: p.unsqueeze(0).expand(count, *p.shape) for n, p in self.model.named_parameters()}
        for _ in range(self.config["inner_steps"]):
            # a mean over equally sized tasks, times their number: the sum of per-task losses
            loss = count * self.family.loss(self.model.batched_forward(params, support_x).flatten(0, 1),
                                            support_y.flatten(0, 1))
            grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=not self.config["first_order"])
            params = {n: p - self.config["inner_lr"] * g for (n, p), g in zip(params.items(), grads)}
        query_out = self.model.batched_forward(params, query_x)
        query_loss = self.family.loss(query_out.flatten(0, 1), query_y.flatten(0, 1))
        query_loss.backward()
        query_out = query_out.detach()
        metric = sum(self.family.metric(query_out[i], query_y[i]) for i in range(count)) / count
        return {"loss": query_loss.item(), self.family.metric_name: metric}

    def adapt(self, support_x, support_y, steps=None, lr=None):
        steps = self.config["eval_inner_steps"] if steps is None else steps
        lr = eval_inner_lr(self.config) if lr is None else lr
        params = {n: p.detach().requires_grad_() for n, p in self.model.named_parameters()}
        with torch.enable_grad():
            for _ in range(steps):
                loss = self.family.loss(self.model.functional_forward(params, support_x, bn_training=False),
                                        support_y)
                grads = torch.autograd.grad(loss, tuple(params.values()))
                params = {n: (p - lr * g).detach().requires_grad_()
                          for (n, p), g in zip(params.items(), grads)}
        return {n: p.detach() for n, p in params.items()}

    @torch.no_grad()
    def predict(self, adapted, x):
        return self.model.functional_forward(adapted, x, bn_training=False)
