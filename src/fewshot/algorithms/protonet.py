"""Prototypical Networks (Snell, Swersky & Zemel 2017): the non-gradient baseline.

A class's prototype is the mean embedding of its support images; a query's logits
are the negative squared Euclidean distances to the prototypes. Support and query
are embedded in one batch, as in the authors' code. No fixed output layer: any
number of classes at test (`eval_ways`, and `fewshot predict` with any support).
"""
from typing import TYPE_CHECKING

import torch

from . import ALGORITHMS
from .base import Algorithm

if TYPE_CHECKING:
    from ..data.episodes import Task


def prototype_logits(support_features: torch.Tensor, support_y: torch.Tensor,
                     query_features: torch.Tensor) -> torch.Tensor:
    classes = int(support_y.max()) + 1
    prototypes = torch.stack([support_features[support_y == c].mean(0) for c in range(classes)])
    return -torch.cdist(query_features, prototypes).pow(2)


@ALGORITHMS.register("protonet")
class ProtoNet(Algorithm):
    reads = frozenset()  # no inner loop: no inner steps or rates
    embeds_support_with_queries = True
    any_number_of_classes = True

    def logits(self, params: dict[str, torch.Tensor], support_x: torch.Tensor, support_y: torch.Tensor,
               query_x: torch.Tensor, bn_training: bool = True) -> torch.Tensor:
        features = self.model.functional_forward(params, torch.cat([support_x, query_x]), bn_training)
        return prototype_logits(features[:len(support_x)], support_y, features[len(support_x):])

    def meta_gradient(self, tasks: list["Task"], step: int = 0) -> dict[str, float]:
        params = dict(self.model.named_parameters())
        loss_sum = metric_sum = 0.0
        for task in tasks:
            logits = self.logits(params, task.support_x, task.support_y, task.query_x)
            loss = self.family.loss(logits, task.query_y)
            (loss / len(tasks)).backward()
            loss_sum += loss.item()
            metric_sum += self.family.metric(logits.detach(), task.query_y)
        return {"loss": loss_sum / len(tasks), self.family.metric_name: metric_sum / len(tasks)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        return {"support_x": support_x, "support_y": support_y}

    @torch.no_grad()
    def predict(self, adapted: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        return self.logits(params, adapted["support_x"], adapted["support_y"], x, bn_training=False)

    def describe_inner_lr(self) -> str:
        return "none (no inner loop)"

    def describe_adaptation(self, steps: int, lr: float | None = None) -> str:
        return "no inner loop: each query takes the class of the nearest prototype (its support mean embedding)"
