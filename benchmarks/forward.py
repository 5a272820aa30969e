"""The one-forward design against the hand-written functional forwards it replaced
(issue 15): a second-order MAML meta-step on the per-task loop path, timed per form,
interleaved in one process (the forms take turns within every step, their order
rotating from step to step) so that machine noise hits every form alike.

  hand-written     the backbone's functional forward as it was written before issue 15:
                   F.conv2d / F.batch_norm on a dict of tensors walked by string keys
                   (copied below, conv4 and resnet12)
  functional_call  torch.func.functional_call(model, params, (x,), options) of the
                   module's own `forward`, with torch's defaults (tie_weights=True)
  fewshot          `model.functional_forward(params, x, ...)`: what the algorithms call

Each row also gives the largest float64 meta-gradient difference of each form to
the hand-written one, on the same tasks.

    python benchmarks/forward.py --data ../shared/data/omniglot-28 --threads 1 --steps 9

On a shared machine use --threads 1 and read the CPU-time columns.
"""
import argparse

import torch
import torch.nn.functional as F

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset
from side_by_side import gradient_differences, time_in_turns, write_json

WORKLOADS = {
    "omniglot-5w1s": ("omniglot-5w1s", {}),
    "omniglot-5w1s-pytorch": ("omniglot-5w1s-pytorch", {}),
    # a scaled-down ResNet-12 on the same tasks (the full one takes minutes per step here)
    "resnet12-tiny": ("omniglot-5w1s", {"model": "resnet12", "widths": [16, 24, 32, 48], "downsample": "maxpool",
                                        "meta_batch": 8}),
}
FORMS = ["hand-written", "functional_call", "fewshot"]


# The hand-written functional forwards before issue 15 (src/fewshot/models/conv4.py and resnet.py at
# commit 372fdca), minus the summary trace: the reference the new forward is measured against.
def old_conv4_forward(model, params, x, bn_training=True, bn_step=0):
    stride = 2 if model.downsample == "stride" else 1
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}."
        x = F.conv2d(x, params[p + "conv.weight"], params[p + "conv.bias"], stride=stride, padding=1)
        weight, bias = params[p + "norm.weight"], params[p + "norm.bias"]
        mean, var = (block.norm.running_mean, block.norm.running_var) if not model.transductive else (None, None)
        if weight.dim() == 2:
            k = min(bn_step, weight.shape[0] - 1)
            weight, bias = weight[k], bias[k]
            mean, var = (mean[k], var[k]) if mean is not None else (None, None)
        x = F.batch_norm(x, mean, var, weight, bias, training=bn_training or model.transductive, momentum=0.1)
        x = F.relu(x)
        if model.downsample == "maxpool":
            x = F.max_pool2d(x, 2)
    x = x.mean((2, 3)) if model.downsample == "stride" else x.flatten(1)
    return F.linear(x, params["head.weight"], params["head.bias"])


def _old_batch_norm(model, params, name, x, bn_training):
    norm = model.get_submodule(name)
    stats = (None, None) if model.transductive else (norm.running_mean, norm.running_var)
    return F.batch_norm(x, *stats, params[name + ".weight"], params[name + ".bias"],
                        training=bn_training or model.transductive, momentum=0.1)


def old_resnet12_forward(model, params, x, bn_training=True, bn_step=0):
    for i in range(len(model.stages)):
        p = f"stages.{i}."
        shortcut = F.conv2d(x, params[p + "shortcut.weight"])
        shortcut = _old_batch_norm(model, params, p + "shortcut_norm", shortcut, bn_training)
        h = x
        for j in range(3):
            h = F.conv2d(h, params[p + f"convs.{j}.weight"], padding=1)
            h = _old_batch_norm(model, params, p + f"norms.{j}", h, bn_training)
            if j < 2:
                h = F.leaky_relu(h, 0.1)
        x = F.max_pool2d(F.leaky_relu(h + shortcut, 0.1), 2)
    x = x.mean((2, 3))
    return F.linear(x, params["head.weight"], params["head.bias"])


def build(config, form, dtype):
    torch.manual_seed(config.seed)
    algorithm = algorithms.build(config.replace(batch_tasks=False)).to(dtype)
    model = algorithm.model
    if form == "hand-written":
        old = old_conv4_forward if config.model == "conv4" else old_resnet12_forward
        model.functional_forward = lambda params, x, bn_training=True, **options: old(model, params, x, bn_training)
    elif form == "functional_call":
        model.functional_forward = lambda params, x, bn_training=True, **options: torch.func.functional_call(
            model, params, (x,), {"bn_training": bn_training, **options})
    return algorithm


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/omniglot-28")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=9, help="timed steps per form, after one warm-up step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--check-tasks", type=int, default=2, help="tasks in the float64 gradient check")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps per form, "
          f"second-order MAML, per-task loop")
    print("| workload | meta-batch | inner steps | images/task | " +
          " | ".join(f"{form} s/step (CPU s)" for form in FORMS) +
          " | fewshot / hand-written (CPU) | max abs grad diff to hand-written (float64) |")
    print("| --- " * (6 + len(FORMS)) + "|")
    rows = []
    for name in args.workloads:
        preset, overrides = WORKLOADS[name]
        config = apply_overrides(load_preset(preset), {"data": args.data, "first_order": False, **overrides})
        dataset, refs = data.load(config, progress=False)
        sampler = data.sampler(config, dataset, refs, "train", config.seed)
        tasks64 = data.sampler(config, dataset, refs, "train", config.seed,
                               dtype=torch.float64).batch(0, args.check_tasks)
        diffs = gradient_differences(build, config, FORMS, tasks64)
        built = {form: build(config, form, torch.float32) for form in FORMS}
        med, tasks = time_in_turns(built, sampler, config.meta_batch, args.steps, rotate=True)
        task = tasks[0]
        row = {"workload": name, "preset": preset, "overrides": overrides, "meta_batch": config.meta_batch,
               "inner_steps": config.inner_steps, "images_per_task": task.images,
               "median_s": {f: m[0] for f, m in med.items()}, "median_cpu_s": {f: m[1] for f, m in med.items()},
               "grad_diff": diffs}
        rows.append(row)
        cells = " | ".join(f"{med[f][0]:.3f} ({med[f][1]:.3f})" for f in FORMS)
        ratio = f"{med['fewshot'][0] / med['hand-written'][0]:.3f} ({med['fewshot'][1] / med['hand-written'][1]:.3f})"
        print(f"| {name} | {config.meta_batch} | {config.inner_steps} | {task.images} | {cells} | {ratio} | "
              f"{', '.join(f'{f} {d:.1e}' for f, d in diffs.items())} |", flush=True)
    if args.json:
        write_json(args.json, args.steps, rows)


if __name__ == "__main__":
    main()
