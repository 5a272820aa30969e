"""Task families: what a task's loss and metric are. Algorithms take them from
here, so the same MAML code fits classification and regression."""
import torch
import torch.nn.functional as F


class Classification:
    metric_name = "accuracy"
    higher_is_better = True

    @staticmethod
    def loss(outputs, targets):
        return F.cross_entropy(outputs, targets)

    @staticmethod
    def metric(outputs, targets):
        return (outputs.argmax(1) == targets).to(torch.float64).mean().item()


class Regression:
    metric_name = "mse"
    higher_is_better = False

    @staticmethod
    def loss(outputs, targets):
        return F.mse_loss(outputs, targets)

    @staticmethod
    def metric(outputs, targets):
        return F.mse_loss(outputs, targets).item()


REGRESSION_DATASETS = {"sinusoid"}


def family(config):
    return Regression() if config["dataset"] in REGRESSION_DATASETS else Classification()


def better(family, new, old):
    return old is None or (new > old if family.higher_is_better else new < old)
