"""Task families: what a task's loss and metric are. Algorithms take them from
here, so the same MAML code fits classification and regression."""
import torch
import torch.nn.functional as F

from .config import Config


class Family:
    """A task family: the loss the inner and outer loops minimize, and the metric the
    log and the evaluator report (`metric_tensor` a 0-dim tensor that does not wait for
    the device; `metric` the same as a float)."""
    metric_name: str
    higher_is_better: bool

    @staticmethod
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def metric_tensor(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def metric(cls, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return cls.metric_tensor(outputs, targets).item()


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Outputs (..., n, classes) with a leading task dimension give the mean over equally sized tasks."""
    return (outputs.argmax(-1) == targets).to(torch.float64).mean()


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Over a stack of equally sized tasks, their mean MSE."""
    return F.mse_loss(outputs, targets).detach()


class Classification(Family):
    metric_name, higher_is_better = "accuracy", True
    loss, metric_tensor = staticmethod(F.cross_entropy), staticmethod(accuracy)


class Regression(Family):
    metric_name, higher_is_better = "mse", False
    loss, metric_tensor = staticmethod(F.mse_loss), staticmethod(mse)


REGRESSION_DATASETS = {"sinusoid"}


def family(config: Config) -> Family:
    return Regression() if config.dataset in REGRESSION_DATASETS else Classification()


def better(family: Family, new: float, old: float | None) -> bool:
    return old is None or (new > old if family.higher_is_better else new < old)
