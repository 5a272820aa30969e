"""One MAML++ meta-step of ours against the authors' code, on identical weights and
tasks, in float64 (docs/faithfulness.md, the MAML++ section).

    python benchmarks/mamlpp_reference.py --reference REF_DIR [--data DATA] [--preset P] [--tasks N]

REF_DIR is a checkout of AntreasAntoniou/HowToTrainYourMAMLPytorch (the commit named in
docs/faithfulness.md): its few_shot_learning_system.py is imported from there, never
copied here. The script builds their MAMLFewShotClassifier with an args namespace equal
to the preset, copies our weights (network, per-step batch-norm rows, learned step
sizes) into it, perturbs every per-step row and step size so that a wrong row or rate
cannot hide behind equal initial values, and for each case compares
  * the meta-gradient of every parameter: theirs by their own train_forward_prop and
    loss.backward() (run_train_iter without its scheduler step, float32 casts and
    optimizer step), ours by algorithm.meta_gradient on the same tasks;
  * the meta-test logits: their evaluation_forward_prop against our adapt + predict.
Shims, none of which changes what is computed: torch's default dtype is float64 while
their code runs (it creates tensors with torch.Tensor / torch.ones, among them the
multi-step loss weights, which would otherwise be float32), and their prints are
silenced.
Tasks: from --data (our sampler's first meta-batch, reordered class by class as their
loader lays a batch out), else uniform random images.
"""
import argparse
import contextlib
import io
import json
import sys
import types
import warnings

import torch

from fewshot import algorithms, data
from fewshot.config import load_preset
from fewshot.data.episodes import Task


def their_args(config, meta_batch, first_order_epochs):
    """Their args namespace (utils/parser_utils.py keys) for our config."""
    return types.SimpleNamespace(
        batch_size=meta_batch, image_height=config.image_size, image_width=config.image_size,
        image_channels=config.channels, num_classes_per_set=config.ways, num_samples_per_class=config.shots,
        num_target_samples=config.query, seed=config.seed, use_cuda=False, dataset_name="omniglot_dataset",
        cnn_num_filters=config.filters, num_stages=4, conv_padding=True, cnn_blocks_per_stage=1,
        max_pooling=config.downsample == "maxpool", norm_layer="batch_norm",
        per_step_bn_statistics=config.per_step_bn, learnable_bn_gamma=True, learnable_bn_beta=True,
        enable_inner_loop_optimizable_bn_params=False, learnable_batch_norm_momentum=False,
        number_of_training_steps_per_iter=config.inner_steps,
        number_of_evaluation_steps_per_iter=config.eval_inner_steps,
        task_learning_rate=config.inner_lr, learnable_per_layer_per_step_inner_loop_learning_rate=True,
        multi_step_loss_num_epochs=config.msl_epochs, use_multi_step_loss_optimization=True,
        second_order=not config.first_order, first_order_to_second_order_epoch=first_order_epochs - 1,
        meta_learning_rate=config.meta_lr, min_learning_rate=config.min_meta_lr,
        total_epochs=config.steps // config.steps_per_epoch, total_iter_per_epoch=config.steps_per_epoch,
        dropout_rate_value=0.0, weight_decay=0.0)


def name_pairs(config):
    """(our parameter name, their parameter name) for every learned tensor."""
    pairs = []
    for i in range(4):
        for kind in ("weight", "bias"):
            pairs.append((f"model.blocks.{i}.conv.{kind}", f"classifier.layer_dict.conv{i}.conv.{kind}"))
            pairs.append((f"model.blocks.{i}.norm.{kind}", f"classifier.layer_dict.conv{i}.norm_layer.{kind}"))
            pairs.append((f"step_sizes.blocks/{i}/conv/{kind}",
                          f"inner_loop_optimizer.names_learning_rates_dict.layer_dict-conv{i}-conv-{kind}"))
    for ours, theirs in (("weight", "weights"), ("bias", "bias")):
        pairs.append((f"model.head.{ours}", f"classifier.layer_dict.linear.{theirs}"))
        pairs.append((f"step_sizes.head/{ours}",
                      f"inner_loop_optimizer.names_learning_rates_dict.layer_dict-linear-{theirs}"))
    return pairs


def make_tasks(config, count, data_spec):
    if data_spec is None:
        generator = torch.Generator().manual_seed(0)
        labels = lambda k: torch.arange(config.ways).repeat_interleave(k)
        shape = (config.channels, config.image_size, config.image_size)
        return [Task(torch.rand(config.ways * config.shots, *shape, generator=generator), labels(config.shots),
                     torch.rand(config.ways * config.query, *shape, generator=generator), labels(config.query))
                for _ in range(count)]
    config = config.replace(data=data_spec)
    dataset, refs = data.load(config, progress=False)
    sampled = data.sampler(config, dataset, refs, "train", seed=config.seed, dtype=torch.float64).batch(0, count)
    tasks = []
    for task in sampled:  # class by class, as their batches are (classes x samples)
        s, q = task.support_y.argsort(stable=True), task.query_y.argsort(stable=True)
        tasks.append(Task(task.support_x[s], task.support_y[s], task.query_x[q], task.query_y[q]))
    return tasks


def their_batch(config, tasks):
    """(x_support, x_target, y_support, y_target) as their data provider shapes them."""
    shape = (config.channels, config.image_size, config.image_size)
    return (torch.stack([t.support_x.view(config.ways, config.shots, *shape) for t in tasks]),
            torch.stack([t.query_x.view(config.ways, config.query, *shape) for t in tasks]),
            torch.stack([t.support_y.view(config.ways, config.shots) for t in tasks]),
            torch.stack([t.query_y.view(config.ways, config.query) for t in tasks]))


@contextlib.contextmanager
def their_code():
    """Their code runs in float64 and silently (see the module's docstring)."""
    torch.set_default_dtype(torch.float64)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        torch.set_default_dtype(torch.float32)


def build_pair(reference, config, meta_batch, first_order_epochs):
    """(ours, theirs) with identical float64 weights, every per-step row and rate perturbed."""
    sys.path.insert(0, reference)
    with their_code():
        from few_shot_learning_system import MAMLFewShotClassifier
        shape = (2, config.channels, config.image_size, config.image_size)
        theirs = MAMLFewShotClassifier(im_shape=shape, device=torch.device("cpu"),
                                       args=their_args(config, meta_batch, first_order_epochs))
    torch.manual_seed(0)
    ours = algorithms.build(config).double()
    generator = torch.Generator().manual_seed(1)
    own, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    with torch.no_grad():
        for name, p in own.items():
            if name.startswith("step_sizes."):
                p.mul_(0.5 + torch.rand(p.shape, generator=generator, dtype=p.dtype))
            elif ".norm." in name:
                p.add_(0.2 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        for ours_name, their_name in name_pairs(config):
            other[their_name].copy_(own[ours_name])
    ours_names = {o for o, _ in name_pairs(config)}
    theirs_names = {t for _, t in name_pairs(config)}
    assert ours_names == set(own), sorted(set(own) ^ ours_names)
    assert theirs_names == {n for n, p in other.items() if p.requires_grad}, "a parameter of theirs is unpaired"
    return ours, theirs


def compare(reference, config, tasks, epoch, first_order_epochs):
    config = config.replace(first_order_epochs=first_order_epochs)
    ours, theirs = build_pair(reference, config, len(tasks), first_order_epochs)
    step = epoch * config.steps_per_epoch
    # theirs: run_train_iter's forward and backward, without its optimizer step
    theirs.current_epoch = epoch
    theirs.train()
    with their_code():
        losses, _ = theirs.train_forward_prop(data_batch=their_batch(config, tasks), epoch=epoch)
        theirs.zero_grad()
        losses["loss"].backward()
    their_grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    # ours, per-task loop and batched pass
    rows = {}
    for batched in (False, True):
        ours.config.batch_tasks = batched
        ours.zero_grad()
        result = ours.meta_gradient(tasks, step)
        own = dict(ours.named_parameters())
        for ours_name, their_name in name_pairs(config):
            grad, their_grad = own[ours_name].grad, their_grads[their_name]
            row = rows.setdefault(ours_name, {"theirs": their_name, "largest |grad|": their_grad.abs().max().item()})
            row["batched" if batched else "per-task"] = (grad - their_grad).abs().max().item()
        rows.setdefault("(loss)", {})["batched" if batched else "per-task"] = abs(
            float(result["loss"]) - losses["loss"].item())
    # meta-test: their evaluation forward (it differentiates the inner loop, so no no_grad)
    # against our adapt + predict
    with their_code():
        theirs.eval()
        _, their_logits = theirs.evaluation_forward_prop(data_batch=their_batch(config, tasks), epoch=epoch)
    logits = max((ours.predict(ours.adapt(t.support_x, t.support_y), t.query_x)
                  - torch.as_tensor(their_logits[i])).abs().max().item() for i, t in enumerate(tasks))
    theirs.zero_grad()
    return {"epoch": epoch, "step": step, "first_order_epochs": first_order_epochs,
            "second_order": ours.second_order(step), "loss_weights": ours.loss_weights(step),
            "gradients": rows, "meta-test logits": logits}


def markdown(results, config):
    """One table: a row per parameter, per case the largest |ours - theirs| of the per-task loop and of
    the batched pass, with the largest |their gradient| for scale."""
    def case(result):
        order = "second" if result["second_order"] else "first"
        msl = "multi-step loss" if result["loss_weights"][0] > 0 else "last step only"
        return f"epoch {result['epoch']}: {order} order, {msl}"
    lines = ["| parameter | " + " | ".join(f"{case(r)}: largest \\|their grad\\| | \\|ours - theirs\\| "
                                           f"(loop / batched)" for r in results) + " |",
             "| --- |" + " --- | --- |" * len(results)]
    for name in results[0]["gradients"]:
        cells = []
        for result in results:
            row = result["gradients"][name]
            scale = f"{row['largest |grad|']:.2e}" if "largest |grad|" in row else "-"
            cells += [scale, f"{row['per-task']:.1e} / {row['batched']:.1e}"]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append(f"| meta-test logits after {config.eval_inner_steps} steps | " + " | ".join(
        f"- | {r['meta-test logits']:.1e}" for r in results) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of AntreasAntoniou/HowToTrainYourMAMLPytorch")
    parser.add_argument("--preset", default="mamlpp-omniglot-5w1s")
    parser.add_argument("--data", default=None, help="a dataset for the tasks (default: random images)")
    parser.add_argument("--image-size", type=int, default=None, help="in place of the preset's (small: faster)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks in the meta-batch")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--markdown", action="store_true", help="also print one table of all cases")
    args = parser.parse_args()
    # their zero_grad reads .grad of non-leaf tensors, which torch warns about at every inner step
    warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
    config = load_preset(args.preset)
    if args.image_size:
        config = config.replace(image_size=args.image_size)
    tasks = [Task(*(t.double() if t.is_floating_point() else t for t in
                    (task.support_x, task.support_y, task.query_x, task.query_y)))
             for task in make_tasks(config, args.tasks, args.data)]
    msl = config.msl_epochs
    cases = [  # (epoch, first_order_epochs)
        (0, config.first_order_epochs),  # the preset at its first epoch: its order, the multi-step loss
        (1, 2),                          # first order (their first_order_to_second_order_epoch 1), msl annealed
        (msl + 2, 2),                    # after both: second order, the last step's loss only
    ]
    results = [compare(args.reference, config, tasks, epoch, fo) for epoch, fo in cases]
    for result in results:
        print(f"epoch {result['epoch']} (meta-step {result['step']}), first_order_epochs "
              f"{result['first_order_epochs']}: {'second' if result['second_order'] else 'first'} order, "
              f"loss weights {[round(w, 4) for w in result['loss_weights']]}")
        print(f"  {'parameter':34} {'largest |their grad|':>20} {'|ours - theirs| loop':>21} {'batched':>9}")
        for name, row in result["gradients"].items():
            print(f"  {name:34} {row.get('largest |grad|', float('nan')):20.3e} {row['per-task']:21.1e} "
                  f"{row['batched']:9.1e}")
        print(f"  meta-test logits after {config.eval_inner_steps} steps: largest |ours - theirs| "
              f"{result['meta-test logits']:.1e}")
    if args.markdown:
        print(markdown(results, config))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "image_size": config.image_size, "tasks": args.tasks,
                       "data": args.data, "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
