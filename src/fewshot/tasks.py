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
    def metric_tensor(outputs, targets):
        """Accuracy as a 0-dim tensor (no wait for the device); outputs (..., n, classes)
        with a leading task dimension give the mean over equally sized tasks."""
        return (outputs.argmax(-1) == targets).to(torch.float64).mean()

    @classmethod
    def metric(cls, outputs, targets):
        return cls.metric_tensor(outputs, targets).item()


class Regression:
    metric_name = "mse"
    higher_is_better = False

    @staticmethod
    def loss(outputs, targets):
        return F.mse_loss(outputs, targets)

    @staticmethod
    def metric_tensor(outputs, targets):
        """MSE as a 0-dim tensor; over a stack of equally sized tasks, their mean MSE."""
        return F.mse_loss(outputs, targets).detach()

    @classmethod
    def metric(cls, outputs, targets):
        return cls.metric_tensor(outputs, targets).item()


REGRESSION_DATASETS = {"sinusoid"}


def family(config):
    return Regression() if config["dataset"] in REGRESSION_DATASETS else Classification()


def better(family, new, old):
    return old is None or (new > old if family.higher_is_better else new < old)
