"""What benchmarks/forward.py and benchmarks/task_batching.py share: several forms of
one meta-step, built side by side, checked against the first form in float64, and
timed in turns within every step, so that machine noise hits every form alike."""
import itertools
import json
import statistics
import time

import torch


def gradient(algorithm, tasks, step=0):
    algorithm.zero_grad()
    algorithm.meta_gradient(tasks, step)
    return [p.grad.clone() for p in algorithm.parameters()]


def gradient_differences(build, config, forms, tasks64, step=0):
    """The largest float64 meta-gradient difference of each form after the first to the
    first; `build(config, form, dtype)` makes a form's algorithm."""
    reference = gradient(build(config, forms[0], torch.float64), tasks64, step)
    return {form: max((a - b).abs().max().item()
                      for a, b in zip(reference, gradient(build(config, form, torch.float64), tasks64, step)))
            for form in forms[1:]}


def time_in_turns(built, sampler, meta_batch, steps, step=0, rotate=False):
    """({form: (median wall s, median CPU s)}, the last step's tasks) over `steps` timed
    meta-steps after one warm-up. Within every step the forms of `built` take turns, in
    their order, or with `rotate` in an order that changes from step to step."""
    forms = list(built)
    orders = itertools.cycle(itertools.permutations(forms)) if rotate else itertools.repeat(forms)
    wall, cpu = {form: [] for form in forms}, {form: [] for form in forms}
    for index in range(steps + 1):
        tasks = sampler.batch(index, meta_batch)
        for form in next(orders):
            started, started_cpu = time.perf_counter(), time.process_time()
            built[form].zero_grad()
            result = built[form].meta_gradient(tasks, step)
            float(result["loss"])  # wait for the step
            if index:  # the first step of each form warms up
                wall[form].append(time.perf_counter() - started)
                cpu[form].append(time.process_time() - started_cpu)
    return {form: (statistics.median(wall[form]), statistics.median(cpu[form])) for form in forms}, tasks


def write_json(path, steps, rows):
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "rows": rows},
                  f, indent=1)
