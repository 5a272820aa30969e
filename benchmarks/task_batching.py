"""Per-task loop vs all tasks in one batched pass, for the meta-step of each preset:
median seconds per step (wall clock and this process's CPU time), measured
interleaved in one process (loop, vmap, grouped, loop, ...) so that machine noise
hits every form alike, and the float64 meta-gradient difference to the loop.

  loop     the per-task loop (`batch_tasks: false`)
  vmap     the batched pass through the model's `batched_forward`: torch.func.vmap
           of its one functional forward (`batch_tasks: true`)
  grouped  the same pass through the hand-written grouped-convolution forward
           (`grouped_forward`; conv4 with one set of batch-norm weights, MLP)

    python benchmarks/task_batching.py --data ../shared/data/omniglot-28 --threads 1 --steps 5

On a shared machine use --threads 1 (OpenMP threads of two processes spinning
against each other distort every figure) and read the CPU-time columns.
"""
import argparse
import json
import statistics
import time

import torch

from fewshot import algorithms, data
from fewshot.config import apply_overrides, load_preset

PRESETS = ["omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s", "omniglot-5w1s-pytorch",
           "fomaml-omniglot-5w1s", "anil-omniglot-5w1s", "metasgd-omniglot-5w1s", "mamlpp-omniglot-5w1s",
           "sinusoid-10shot"]


def build(config, form, dtype):
    torch.manual_seed(config["seed"])
    algorithm = algorithms.build({**config, "batch_tasks": form != "loop"}).to(dtype)
    if form == "grouped":  # every parameter per task, as the hand-written forward wants
        model = algorithm.model

        def grouped(params, x, bn_training=True, bn_step=0):
            tasks = len(x)
            own = dict(model.named_parameters())
            params = {n: p if p.dim() > own[n].dim() else p.expand(tasks, *p.shape) for n, p in params.items()}
            return model.grouped_forward(params, x, bn_training, bn_step)
        model.batched_forward = grouped
    return algorithm


def forms(config):
    grouped = config["model"] == "mlp" or not config["per_step_bn"]
    return ["loop", "vmap"] + (["grouped"] if grouped else [])


def gradient(algorithm, tasks, step):
    algorithm.zero_grad()
    algorithm.meta_gradient(tasks, step)
    return [p.grad.clone() for p in algorithm.parameters()]


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps per form")
    print("| preset | images/task | meta-batch | loop s/step (CPU s) | vmap s/step (CPU s) | grouped s/step (CPU s) "
          "| loop / vmap (CPU) | loop / grouped (CPU) | max abs grad diff vmap, grouped (float64) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for name in args.presets:
        config = apply_overrides(load_preset(name), {"data": args.data, **overrides})
        dataset, refs = data.load(config, progress=False)
        sampler = data.sampler(config, dataset, refs, "train", config["seed"])
        tasks64 = data.sampler(config, dataset, refs, "train", config["seed"],
                               dtype=torch.float64).batch(0, min(args.check_tasks, config["meta_batch"]))
        names = forms(config)
        reference = gradient(build(config, "loop", torch.float64), tasks64, args.step)
        diffs = {form: max((a - b).abs().max().item()
                           for a, b in zip(reference, gradient(build(config, form, torch.float64), tasks64, args.step)))
                 for form in names[1:]}
        built = {form: build(config, form, torch.float32) for form in names}
        wall, cpu = {form: [] for form in names}, {form: [] for form in names}
        for index in range(args.steps + 1):
            tasks = sampler.batch(index, config["meta_batch"])
            for form in names:
                started, started_cpu = time.perf_counter(), time.process_time()
                built[form].zero_grad()
                result = built[form].meta_gradient(tasks, args.step)
                float(result["loss"])  # wait for the step
                if index:  # the first step of each form warms up
                    wall[form].append(time.perf_counter() - started)
                    cpu[form].append(time.process_time() - started_cpu)
        med = {form: (statistics.median(wall[form]), statistics.median(cpu[form])) for form in names}
        cell = lambda form: f"{med[form][0]:.3f} ({med[form][1]:.3f})" if form in med else "-"
        ratio = lambda form: (f"{med['loop'][0] / med[form][0]:.2f}x ({med['loop'][1] / med[form][1]:.2f}x)"
                              if form in med else "-")
        row = {"preset": name, "images_per_task": tasks[0].images, "meta_batch": config["meta_batch"],
               "median_s": {f: m[0] for f, m in med.items()}, "median_cpu_s": {f: m[1] for f, m in med.items()},
               "grad_diff": diffs}
        rows.append(row)
        print(f"| `{name}` | {row['images_per_task']} | {row['meta_batch']} | {cell('loop')} | {cell('vmap')} | "
              f"{cell('grouped')} | {ratio('vmap')} | {ratio('grouped')} | "
              f"{diffs['vmap']:.1e}, {diffs['grouped']:.1e} |" if "grouped" in diffs else
              f"| `{name}` | {row['images_per_task']} | {row['meta_batch']} | {cell('loop')} | {cell('vmap')} | "
              f"- | {ratio('vmap')} | - | {diffs['vmap']:.1e}, - |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
