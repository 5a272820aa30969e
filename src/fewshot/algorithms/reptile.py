"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Inner loop: `inner_steps` steps of SGD or Adam (betas 0, 0.999, as in the authors'
code) on mini-batches of `inner_batch` of the task's examples; at meta-train a
task's examples are its support and query sets together ("train shots").
Meta-update: theta <- theta + epsilon * (mean adapted weights - theta). It is handed
to the trainer's optimizer as the gradient (theta - mean adapted weights), so SGD
with lr = epsilon (`meta_optimizer: sgd`, `meta_lr`, linearly annealed) takes
exactly that step.

Evaluation: `reptile_eval: transductive` classifies all query images in one batch
(batch-norm statistics over the query batch); `non_transductive` classifies each
query image in a batch with the support images only, so no query image sees another.
"""
import numpy as np
import torch

from . import register
from .base import Algorithm


@register("reptile")
class Reptile(Algorithm):
    def train_on(self, x, y, steps, lr, seed):
        """Adapted weights after `steps` inner steps on (x, y); no graph is kept."""
        params = {n: p.detach().clone().requires_grad_() for n, p in self.model.named_parameters()}
        adam = (torch.optim.Adam(params.values(), lr=lr, betas=(0.0, 0.999))
                if self.config["inner_optimizer"] == "adam" else None)
        batch = self.config["inner_batch"] or len(x)
        order = np.random.default_rng(seed).permutation(len(x))
        position = 0
        with torch.enable_grad():
            for _ in range(steps):
                if position + batch > len(order):
                    position = 0
                rows = torch.from_numpy(order[position:position + batch]).to(x.device)
                position += batch
                loss = self.family.loss(self.model.functional_forward(params, x[rows]), y[rows])
                grads = torch.autograd.grad(loss, tuple(params.values()))
                if adam is not None:
                    for p, g in zip(params.values(), grads):
                        p.grad = g
                    adam.step()
                else:
                    with torch.no_grad():
                        for p, g in zip(params.values(), grads):
                            p -= lr * g
        return {n: p.detach() for n, p in params.items()}

    def meta_gradient(self, tasks, step=0):
        meta = dict(self.model.named_parameters())
        loss_sum = metric_sum = 0.0
        for position, task in enumerate(tasks):
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            adapted = self.train_on(x, y, self.config["inner_steps"], self.config["inner_lr"],
                                    [self.config["seed"], step, position])
            for name, p in meta.items():
                delta = (p.detach() - adapted[name]) / len(tasks)
                p.grad = delta if p.grad is None else p.grad + delta
            with torch.no_grad():
                out = self.model.functional_forward(adapted, x)
                loss_sum += self.family.loss(out, y).item()
                metric_sum += self.family.metric(out, y)
        return {"loss": loss_sum / len(tasks), self.family.metric_name: metric_sum / len(tasks)}

    def adapt(self, support_x, support_y, steps=None, lr=None):
        steps = self.config["eval_inner_steps"] if steps is None else steps
        lr = self.describe_inner_lr() if lr is None else lr
        return {"params": self.train_on(support_x, support_y, steps, lr, [self.config["eval_seed"]]),
                "support_x": support_x}

    @torch.no_grad()
    def predict(self, adapted, x):
        params = adapted["params"]
        if self.config["reptile_eval"] == "transductive":
            return self.model.functional_forward(params, x)
        support = adapted["support_x"]
        return torch.cat([self.model.functional_forward(params, torch.cat([support, x[i:i + 1]]))[-1:]
                          for i in range(len(x))])
