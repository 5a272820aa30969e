"""Per-task loop vs all tasks in one batched pass, for the meta-step of each preset:
median seconds per step (wall clock and this process's CPU time), measured
interleaved in one process (loop, vmap, grouped, loop, ...) so that machine noise
hits every form alike, and the float64 meta-gradient difference to the loop.

  loop     the per-task loop (`batch_tasks: false`)
  grouped  the batched pass (`batch_tasks: true`) through the model's `tasks_forward`
           (grouped convolutions for conv4, batched matmuls for the MLP)
  vmap     the same pass with torch.func.vmap of the model's one `forward` (run with
           explicit parameters by `functional_forward`) in place of its `tasks_forward`

    python benchmarks/task_batching.py --data ../shared/data/omniglot-28 --threads 1 --steps 5

On a shared machine use --threads 1 (OpenMP threads of two processes spinning
against each other distort every figure) and read the CPU-time columns.
"""
import argparse

import torch

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset
from side_by_side import gradient_differences, time_in_turns, write_json

PRESETS = ["omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s", "omniglot-5w1s-pytorch",
           "fomaml-omniglot-5w1s", "anil-omniglot-5w1s", "metasgd-omniglot-5w1s", "mamlpp-omniglot-5w1s",
           "sinusoid-10shot"]


def build(config, form, dtype):
    torch.manual_seed(config.seed)
    algorithm = algorithms.build(config.replace(batch_tasks=form != "loop")).to(dtype)
    if form == "vmap":  # transductive batch norm only (presets): vmap cannot update shared running statistics
        model = algorithm.model
        own = dict(model.named_parameters())
        functional_forward = model.functional_forward

        def vmapped(params, x, bn_training=True, tasks=False, bn_step=0):
            if not tasks:
                return functional_forward(params, x, bn_training, bn_step=bn_step)
            dims = {n: 0 if p.dim() > own[n].dim() else None for n, p in params.items()}
            run = lambda p, x: functional_forward(p, x, bn_training, bn_step=bn_step)
            return torch.func.vmap(run, in_dims=(dims, 0))(params, x)
        model.functional_forward = vmapped
    return algorithm


FORMS = ["loop", "grouped", "vmap"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/omniglot-28")
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per form, after one warm-up step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--check-tasks", type=int, default=4, help="tasks in the float64 gradient check")
    parser.add_argument("--step", type=int, default=0, help="meta-step number given to meta_gradient (schedules)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, YAML values")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--forms", nargs="+", default=FORMS, choices=FORMS,
                        help="the forms to time (loop always: the ratios are to it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps per form")
    print("| preset | support + query images/task | meta-batch | loop s/step (CPU s) | grouped s/step (CPU s) "
          "| vmap s/step (CPU s) | loop / grouped (CPU) | loop / vmap (CPU) | max abs grad diff grouped, vmap "
          "(float64) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for name in args.presets:
        config = apply_overrides(load_preset(name), {"data": args.data, **overrides})
        dataset, refs = data.load(config, progress=False)
        sampler = data.sampler(config, dataset, refs, "train", config.seed)
        tasks64 = data.sampler(config, dataset, refs, "train", config.seed,
                               dtype=torch.float64).batch(0, min(args.check_tasks, config.meta_batch))
        names = ["loop"] + [form for form in args.forms if form != "loop"]
        diffs = gradient_differences(build, config, names, tasks64, args.step)
        built = {form: build(config, form, torch.float32) for form in names}
        med, tasks = time_in_turns(built, sampler, config.meta_batch, args.steps, args.step)
        cell = lambda form: f"{med[form][0]:.3f} ({med[form][1]:.3f})"
        ratio = lambda form: f"{med['loop'][0] / med[form][0]:.2f}x ({med['loop'][1] / med[form][1]:.2f}x)"
        row = {"preset": name, "support_images": len(tasks[0].support_x), "query_images": len(tasks[0].query_x),
               "meta_batch": config.meta_batch,
               "median_s": {f: m[0] for f, m in med.items()}, "median_cpu_s": {f: m[1] for f, m in med.items()},
               "grad_diff": diffs}
        rows.append(row)
        shown = lambda form, text: text(form) if form in names else "-"
        print(f"| `{name}` | {row['support_images']} + {row['query_images']} | {row['meta_batch']} | "
              f"{cell('loop')} | {shown('grouped', cell)} | {shown('vmap', cell)} | {shown('grouped', ratio)} | "
              f"{shown('vmap', ratio)} | {', '.join(f'{d:.1e}' for d in diffs.values())} |", flush=True)
    if args.json:
        write_json(args.json, args.steps, rows)


if __name__ == "__main__":
    main()
