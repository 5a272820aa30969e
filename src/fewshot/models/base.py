"""What every backbone is: one `forward`, parameter roles, and the batch-norm layer.

A backbone's `forward(x, bn_training=None, bn_step=0, trace=None, features_only=False)`
is its only per-task forward. Inner loops run it with explicit parameters through
`torch.func.functional_call` (`Backbone.functional_forward` below), so the module is
never mutated: an adapted dict of tensors stands in for the module's parameters for
one call, and the module's buffers (running statistics) are its own.

The per-call options, all keyword arguments of `forward`, so functional_call and
vmap carry them through:
  bn_training    batch statistics (True) or, with inductive batch norm, the running
                 statistics (False); None: the module's own `training` flag
  bn_step        which per-step batch-norm weights and statistics to use (MAML++)
  trace          a list that receives (layer, output shape, parameter count) per layer
                 (`fewshot summary`)
  features_only  stop before the head (LEO's embeddings, `fewshot embed`)

`functional_forward(..., tasks=True)` runs many tasks in one pass the same way: the
tensors, with a leading task dimension where they are per task, stand in for the
module's, and the backbone's `tasks_forward` reads them from its own layers. No code
walks parameters by name.

Inside `forward`, backbones run their layers with `layer.forward(x)` rather than
`layer(x)`: nn.Module.__call__ (its hook dispatch) costs a measurable share of a
small conv4 forward (docs/benchmarks.md, "One forward per backbone"). Hooks on
the layers therefore do not fire; hooks on the backbone do.

Algorithms never read parameter names: `parameter_roles()` says which parameters are
batch norm's, the head's, or the body's.
"""
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..data.episodes import Task

# Batch-norm momentum of every backbone: running = (1 - m) * running + m * batch
# statistic, torch's default. (cbfinn/maml's tf.contrib.layers.batch_norm has decay 0.999,
# but it never uses running statistics: batch statistics at meta-train and meta-test.)
BN_MOMENTUM = 0.1

Role = Literal["batch_norm", "head", "body"]


class BatchNorm(nn.BatchNorm2d):
    """Batch norm in the mode the backbone's config chose, as a layer:

      transductive  batch statistics always, running statistics never used or updated
      inductive     batch statistics and a running-statistics update while training
                    (`bn_training`), the running statistics at test
      steps > 1     (MAML++) a weight, bias and running statistics per inner step,
                    rows of `steps x C` tensors; step k uses row min(k, steps - 1)

    An nn.BatchNorm2d underneath, so the parameter and buffer names, and checkpoints,
    are those of torch's layer. Without `scale` the layer has no weight parameter at all
    (a learned shift only, as TensorFlow's batch_norm with scale=False)."""

    def __init__(self, channels: int, transductive: bool, steps: int = 1, scale: bool = True,
                 eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps, momentum=BN_MOMENTUM)
        self.transductive = transductive
        self.steps = steps
        if not scale:
            self.register_parameter("weight", None)
        if steps > 1:
            if scale:
                self.weight = nn.Parameter(torch.ones(steps, channels))
            self.bias = nn.Parameter(torch.zeros(steps, channels))
            self.running_mean = torch.zeros(steps, channels)
            self.running_var = torch.ones(steps, channels)

    def step_tensors(self, bn_step: int = 0, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor,
                                                                torch.Tensor | None, torch.Tensor | None]:
        """(weight, bias, running mean, running var) of inner step `bn_step` (the running
        statistics None when transductive). `weight`, `bias`: the ones to use in place of
        the layer's own, with any leading dimensions (a task dimension) before `steps x C`."""
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        mean, var = (None, None) if self.transductive else (self.running_mean, self.running_var)
        if self.steps > 1:  # per-step weights and statistics
            k = min(bn_step, self.steps - 1)
            weight, bias = weight[..., k, :] if weight is not None else None, bias[..., k, :]
            mean, var = (mean[k], var[k]) if mean is not None else (None, None)
        return weight, bias, mean, var

    def forward(self, x: torch.Tensor, bn_training: bool = True, bn_step: int = 0) -> torch.Tensor:
        weight, bias, mean, var = self.step_tensors(bn_step)
        return F.batch_norm(x, mean, var, scale_or_ones(weight, x), bias, training=bn_training or self.transductive,
                            momentum=self.momentum, eps=self.eps)


def scale_or_ones(weight: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Batch norm's scale: `weight`, or constant ones for a layer without a learned scale.
    torch's batch norm given no weight has no second derivative with respect to its input
    and bias (its double backward expects a weight tensor: "Expected a proper Tensor but got
    None"), which second-order MAML needs when the shift is adapted."""
    return weight if weight is not None else x.new_ones(x.shape[1])


def task_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer on the inputs of many tasks (T x n x d): a weight and bias with a
    leading task dimension are each task's own (one fused baddbmm), else shared."""
    if weight.dim() == 3:
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(Backbone.per_task(bias, len(x), 1).unsqueeze(1), x, weight.transpose(1, 2))
    out = x @ weight.transpose(-1, -2)
    if bias is None:
        return out
    return out + (bias.unsqueeze(-2) if bias.dim() == 2 else bias)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Backbone(nn.Module):
    """The interface algorithms use. Subclasses write `forward` and have a `head` (the
    output layer, an nn.Module; None or absent for a feature extractor). No class-level
    default for `head`: it would hide the submodule nn.Module keeps in `_modules`."""

    # Whether `tasks_forward` runs many tasks in one pass exactly as each task's own forward
    can_batch_tasks = False
    # the config keys read_by the model (config.Config) that this backbone reads: set away from
    # their defaults under a backbone that does not list them, they are refused (or not: refuse_ignored)
    reads: frozenset[str] = frozenset()

    def parameter_roles(self) -> dict[str, Role]:
        """Every parameter's role, by name: "batch_norm" (a batch-norm layer's weight or
        bias), "head" (the output layer, ANIL's adapted part) or "body"."""
        head = getattr(self, "head", None)
        head = {id(m) for m in head.modules()} if head is not None else set()
        roles = {}
        for module_name, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                roles[full] = ("head" if id(module) in head else
                               "batch_norm" if isinstance(module, nn.modules.batchnorm._BatchNorm) else "body")
        return roles

    @property
    def batch_norm_mode(self) -> Literal["transductive", "inductive"] | None:
        """How the network's batch norm normalizes at test: "transductive" (batch
        statistics: an output depends on the rest of its batch), "inductive" (running
        statistics, updated by training forwards), or None without batch norm."""
        modes = {m.transductive for m in self.modules() if isinstance(m, BatchNorm)}
        if not modes:
            return None
        return "transductive" if modes == {True} else "inductive"

    def functional_forward(self, params: dict, x: torch.Tensor, bn_training: bool = True, tasks: bool = False,
                           **options: Any) -> torch.Tensor:
        """`forward` with `params` (name -> tensor) in place of the module's parameters
        (and buffers, if named), as torch.func.functional_call(self, params, (x,), options)
        computes it; the module is as it was afterwards. Buffers not in `params` are the
        module's own, so an inductive forward updates its running statistics.

        With `tasks`, many tasks in one pass: x is T x n x ...; a tensor of `params` with a
        leading task dimension T is per task, one without it is shared by the tasks (ANIL's
        body, MAML++'s batch-norm weights); the backbone's `tasks_forward` runs them, reading
        its layers' tensors as `forward` does; T x n x outputs.

        Eagerly the tensors go into their modules' instance `__dict__`, where attribute
        lookup finds them before nn.Module.__getattr__ (a Python call per read) looks in
        `_parameters`; taking them out uncovers the module's own again. functional_call
        resolves every name and checks every tensor on each call, which cost a
        second-order MAML step on conv4 more CPU time than the hand-written
        functional forward this replaces (measured in docs/benchmarks.md, "One forward
        per backbone"). Under torch.compile it is functional_call itself."""
        if torch.compiler.is_compiling() and not tasks:
            return torch.func.functional_call(self, params, (x,), {**options, "bn_training": bn_training},
                                              tie_weights=False)
        owners = self.__dict__.get("_tensor_owners")
        if owners is None:
            owners = self.__dict__["_tensor_owners"] = self._find_tensor_owners()
        placed = []  # every name must be one of the module's
        try:
            for name, tensor in params.items():
                owner, attribute = owners[name]
                owner[attribute] = tensor
                placed.append((owner, attribute))
            if tasks:
                return self.tasks_forward(x, bn_training, options.get("bn_step", 0),
                                          options.get("features_only", False))
            return self(x, bn_training=bn_training, **options)
        finally:
            for owner, attribute in placed:
                del owner[attribute]

    def _find_tensor_owners(self) -> dict:
        """name -> (the owning module's instance __dict__, attribute), for every parameter
        and buffer."""
        owners = {}
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for table in (module._parameters, module._buffers):
                for attribute in table:
                    owners[prefix + attribute] = (module.__dict__, attribute)
        return owners

    def functional_head(self, params: dict, features: torch.Tensor, tasks: bool = False) -> torch.Tensor:
        """The head alone (a linear layer) on `features` (`forward(..., features_only=True)`),
        with `params`' head tensors in place of its own; with `tasks`, features are T x n x d
        and the head's tensors per task (leading T) or shared."""
        prefix = self.__dict__.get("_head_prefix")
        if prefix is None:
            prefix = self.__dict__["_head_prefix"] = next(
                f"{name}." for name, module in self.named_modules() if module is self.head)
        weight, bias = params[prefix + "weight"], params.get(prefix + "bias")
        return task_linear(features, weight, bias) if tasks else F.linear(features, weight, bias)

    def features(self, params: dict, x: torch.Tensor, bn_training: bool = True) -> torch.Tensor:
        """The features before the head, with `params` (`fewshot embed`)."""
        return self.functional_forward(params, x, bn_training, features_only=True)

    def batching_pays_on_cpu(self, task: "Task", threads: int) -> bool:
        """Whether the batched pass is faster on the CPU for tasks like `task` with this
        many torch threads (measured per backbone)."""
        return False

    def tasks_forward(self, x: torch.Tensor, bn_training: bool, bn_step: int,
                      features_only: bool = False) -> torch.Tensor:
        """Many tasks in one pass (`functional_forward(..., tasks=True)`), reading the layers'
        tensors (each with or without a leading task dimension), the head's skipped with
        `features_only`; backbones that can batch tasks write it."""
        raise NotImplementedError(f"{type(self).__name__} runs tasks one at a time (can_batch_tasks is False)")

    @staticmethod
    def per_task(tensor: torch.Tensor, tasks: int, dims: int) -> torch.Tensor:
        """`tensor` with a leading task dimension: as it is when it has one (more than
        `dims`, the layer's own number of dimensions), else the shared one expanded."""
        return tensor if tensor.dim() > dims else tensor.expand(tasks, *tensor.shape)

    def update_running_statistics(self) -> None:
        """Apply running-statistics updates that batched forwards queued (none here)."""

    def head_forward(self, x: torch.Tensor, trace: list | None = None, features_only: bool = False) -> torch.Tensor:
        """The end of a forward: the head on features `x`, or `x` itself with
        `features_only` or without a head."""
        head = getattr(self, "head", None)
        if features_only or head is None:
            return x
        x = head.forward(x)
        if trace is not None:
            self.trace_row(trace, "head  linear", x, head)
        return x

    @torch.no_grad()
    def summary_rows(self, x: torch.Tensor) -> list[tuple[str, tuple, int]]:
        """(layer, output shape, parameter count) per layer for input `x` (`fewshot summary`),
        from the module's own forward; running statistics are left as they are."""
        trace = []
        self(x, bn_training=False, trace=trace)
        return trace

    @staticmethod
    def trace_row(trace: list, label: str, x: torch.Tensor, *modules: nn.Module) -> None:
        """Note a layer in `trace`: label, output shape, parameter count. Forwards call it
        under `if trace is not None`, so that a forward without a trace builds no labels."""
        trace.append((label, tuple(x.shape), sum(parameter_count(m) for m in modules)))
