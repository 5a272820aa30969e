"""Capture the fixed-shape meta-step as a graph: the `compile` config key.

    compile_step(algorithm, config, backend=None) -> Callable[[list, int], dict]

returns a callable with `algorithm.meta_gradient`'s signature and effect: called
as `step(tasks, step_index)`, it adds the meta-batch's mean meta-gradient to the
meta-parameters' .grad and returns {"loss": ..., metric_name: ...} (0-dim
tensors, as the eager step returns them). With `compile: false` it is
`algorithm.meta_gradient` itself. The trainer calls it where it called
`algorithm.meta_gradient`, inside `precision.autocast(...)`.

Why not `torch.compile(algorithm.meta_gradient)`: MAML's second-order step calls
`torch.autograd.grad(create_graph=True)` and then `.backward()` through it. With
torch 2.13's defaults dynamo breaks the graph at every `torch.autograd.grad` (a
2-task, 1-inner-step step: 5 graphs, 4 breaks), and the step then fails with
"torch.compile with aot_autograd does not currently support double backward".
(The experimental, process-wide `torch._dynamo.config.trace_autograd_ops = True`
does capture that step as one graph, and its `aot_eager` result equals the eager
step; not used here, being a global flag still under development.) Instead the
step is rewritten here as a pure function with `torch.func`:

    per task:  meta_gradient, (loss, query_out) =
                   grad_and_value(query_loss_after_inner_loop)(meta_params, task)
    where the inner loop itself takes `torch.func.grad` of the support loss (with
    its result detached for first order).

Nothing in it asks autograd for a graph: the meta-parameters enter as plain
(detached) tensors, the nested `grad` transforms are traced by dynamo into one
forward-only graph whose outputs are the meta-gradients, and that graph is what
the backend compiles (`inductor`, C++/OpenMP kernels built with gcc on the CPU,
Triton on CUDA; on CUDA in `reduce-overhead` mode, which replays the step as a
CUDA graph: shapes are fixed, so the whole step is one captured launch). Tasks
of one shape run either one compiled call per task (summing the meta-gradients,
as the eager per-task loop does) or, where the algorithm would batch tasks
(`algorithm.batches_tasks`, e.g. always on CUDA), `vmap` over the tasks of the
same function, in passes of `tasks_per_pass`.

What it covers: MAML (second and first order) and ANIL (its features once per task
through the same `inner_inputs` and `inner_forward` hooks as the eager step), on
networks with no state updated in the forward (conv4 / ResNet with transductive
batch norm, the MLP). Anything else (Meta-SGD's and MAML++'s learned
step sizes and per-step objectives, inductive batch norm's running statistics,
Reptile, ProtoNets, LEO) runs the eager step after a one-line notice on stderr,
and so does a step whose compilation fails (the notice names the error). The
first call compiles (on a 2-core CPU: minutes for conv4 with an empty inductor
cache, seconds once the cache under $TORCHINDUCTOR_CACHE_DIR holds it); a new
task shape compiles again.
"""
import sys
from typing import Callable

import torch

from .algorithms.base import Algorithm
from .algorithms.maml import MAML
from .config import Config

# MAML's hooks that a compiled step reproduces; a subclass that overrides any of
# them (Meta-SGD, MAML++) changes the objective in ways this rewrite does not follow.
_HOOKS = ("step_size", "forward_at", "second_order", "loss_weights", "loss_scale", "objective", "inner_step",
          "meta_parameters", "meta_gradient")


def unsupported(algorithm: Algorithm) -> str | None:
    """Why this algorithm's step cannot be compiled here, or None if it can."""
    if not isinstance(algorithm, MAML):
        return f"{type(algorithm).__name__} is not MAML or ANIL"
    changed = [hook for hook in _HOOKS if getattr(type(algorithm), hook, None) is not getattr(MAML, hook, None)]
    if changed:
        return f"{type(algorithm).__name__} changes MAML's {', '.join(changed)}"
    if algorithm.model.batch_norm_mode == "inductive":
        return "inductive batch norm updates running statistics inside the step"
    return None


def _notice(message: str) -> None:
    print(f"fewshot: note: compile: {message}; running the eager meta-step", file=sys.stderr, flush=True)


def _functional_meta_gradient(algorithm, step_index: int) -> Callable:
    """The meta-gradient of one task as a pure function of (meta_params, support_x,
    support_y, query_x, query_y) -> (meta_gradient dict, (query loss, query outputs))."""
    family = algorithm.family
    inner_steps = algorithm.config.inner_steps
    second_order = algorithm.second_order(step_index)
    adapted_names = [n for n in algorithm.meta_parameters() if algorithm.adapts(n)]

    def support_loss(adapted, frozen, support_in, support_y, k):
        scale = algorithm.loss_scale(1, 1)  # the support set's own
        return family.loss(algorithm.inner_forward({**frozen, **adapted}, support_in, k), support_y) * scale

    def query_loss(meta_params, support_x, support_y, query_x, query_y):
        adapted = {n: meta_params[n] for n in adapted_names}
        frozen = {n: p for n, p in meta_params.items() if n not in adapted}
        support_in, query_in = (algorithm.inner_inputs(meta_params, x) for x in (support_x, query_x))
        for k in range(inner_steps):
            grads = torch.func.grad(support_loss)(adapted, frozen, support_in, support_y, k)
            if not second_order:  # FOMAML: the inner gradients are constants
                grads = {n: g.detach() for n, g in grads.items()}
            adapted = {n: p - algorithm.step_size(n, k) * grads[n] for n, p in adapted.items()}
        query_out = algorithm.inner_forward({**frozen, **adapted}, query_in, algorithm.last_step(inner_steps))
        return family.loss(query_out, query_y) * algorithm.loss_scale(len(query_y), len(support_y)), query_out

    return torch.func.grad_and_value(query_loss, has_aux=True)


def compile_step(algorithm: Algorithm, config: Config, backend: str | None = None) -> Callable[[list, int], dict]:
    """`algorithm.meta_gradient`, or with config.compile its compiled equivalent.
    `backend`: torch.compile's (default "inductor"; tests use "aot_eager", which
    traces the same graph without generating kernels)."""
    if not config.compile:
        return algorithm.meta_gradient
    reason = unsupported(algorithm)
    if reason:
        _notice(reason)
        return algorithm.meta_gradient
    backend = backend or "inductor"
    compiled = {}  # (second_order, batched) -> compiled function; dynamo caches shapes itself
    failed = []

    def step(tasks: list, step_index: int = 0) -> dict:
        if failed:
            return algorithm.meta_gradient(tasks, step_index)
        try:  # nothing is added to .grad before the last lines: a failure leaves the eager step a clean start
            batched = algorithm.batches_tasks(tasks)
            key = (algorithm.second_order(step_index), batched)
            if key not in compiled:
                function = _functional_meta_gradient(algorithm, step_index)
                if batched:
                    function = torch.func.vmap(function, in_dims=(None, 0, 0, 0, 0))
                on_cuda = next(algorithm.parameters()).device.type == "cuda"
                mode = "reduce-overhead" if on_cuda and backend == "inductor" else None
                compiled[key] = torch.compile(function, fullgraph=True, dynamic=False, backend=backend, mode=mode)
            function = compiled[key]
            meta_params = {n: p.detach() for n, p in algorithm.meta_parameters().items()}
            per_pass = (config.tasks_per_pass or len(tasks)) if batched else 1
            grad_sum, loss_sum, metric_sum = None, 0.0, 0.0
            for start in range(0, len(tasks), per_pass):
                part = tasks[start:start + per_pass]
                if batched:
                    stacked = [torch.stack([getattr(t, name) for t in part])
                               for name in ("support_x", "support_y", "query_x", "query_y")]
                    grads, (losses, query_out) = function(meta_params, *stacked)
                    grads = {n: g.sum(0) for n, g in grads.items()}
                    loss_sum = loss_sum + losses.sum()
                    metric_sum = metric_sum + algorithm.family.metric_tensor(query_out, stacked[3]) * len(part)
                else:
                    task = part[0]
                    grads, (loss, query_out) = function(meta_params, task.support_x, task.support_y, task.query_x,
                                                      task.query_y)
                    loss_sum = loss_sum + loss
                    metric_sum = metric_sum + algorithm.family.metric_tensor(query_out, task.query_y)
                # a fresh sum, never the compiled call's own output buffers (CUDA graphs reuse them)
                grad_sum = {n: g.clone() for n, g in grads.items()} if grad_sum is None else \
                    {n: grad_sum[n] + g for n, g in grads.items()}
        except Exception as error:
            failed.append(error)
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            _notice(f"compiling the step failed ({type(error).__name__}: {first_line})")
            return algorithm.meta_gradient(tasks, step_index)
        parameters = algorithm.meta_parameters()
        for name, grad in grad_sum.items():
            grad = grad / len(tasks)
            p = parameters[name]
            p.grad = grad if p.grad is None else p.grad + grad
        return {"loss": (loss_sum / len(tasks)).detach(),
                algorithm.family.metric_name: metric_sum / len(tasks)}

    step.failed = failed  # [the error] once compiling failed and the step runs eagerly
    return step
