"""One ProtoNets meta-step of fewshot against the authors' code, in float64.

The authors' code (jakesnell/prototypical-networks) is not part of fewshot: take a copy
and give its folder (the one that holds `protonets/`); only `protonets.models` is
imported (torch alone; no torchnet, no data loaders):

    git clone https://github.com/jakesnell/prototypical-networks /tmp/protonets-ref
    .venv/bin/python benchmarks/protonet_reference.py /tmp/protonets-ref \
        [--preset protonet-omniglot-5w1s] [--data ../shared/data/omniglot-28] [--tasks 3] [--set KEY=VALUE]

Both networks get the same float64 weights (ours, copied into theirs) and the same
episodes (ours, from the preset's sampler: `ways`-way training episodes and
`eval_ways`-way test episodes), and for each training episode:

  gradient    their `Protonet.loss(sample).backward()` in train() mode against our
              `meta_gradient([task])`: the largest absolute difference per parameter
  running     the batch-norm running statistics both leave after that step
              (their nn.BatchNorm2d, momentum 0.1, in train() mode; our inductive batch norm)

then, after the training episodes, for each test episode:

  eval        their `model.eval()` log-probabilities of the queries against the
              log-softmax of our `predict(adapt(support), query)`

Without --data the episodes are random images of the preset's size. Prints one JSON
object: the largest difference of each kind, per parameter for the gradient (with the
largest gradient entry, for scale). `--set batch_norm=transductive` (the presets' setting
before issue 19) shows what the check tells apart: the running statistics and the test
outputs then differ.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

from fewshot import algorithms, data
from fewshot.config import apply_overrides, eval_query, eval_ways, load_preset, parse_overrides
from fewshot.data.episodes import Task


distances = []  # what their loss computes with euclidean_dist, recorded on the way


def reference_model(path: str, config) -> torch.nn.Module:
    sys.path.insert(0, path)
    from protonets.models import few_shot  # the authors' network and loss

    def recorded(x, y, distance=few_shot.euclidean_dist):
        distances.append(distance(x, y))
        return distances[-1]
    few_shot.euclidean_dist = recorded
    return few_shot.load_protonet_conv(x_dim=[config.channels, config.image_size, config.image_size],
                              hid_dim=config.filters, z_dim=config.filters)


def ours_to_theirs(ours: dict) -> dict:
    """Our conv4 tensors under their names: blocks.i.conv -> encoder.i.0, blocks.i.norm -> encoder.i.1."""
    renamed = {}
    for name, tensor in ours.items():
        if not name.startswith("model.blocks."):
            continue
        _, _, block, layer, field = name.split(".")
        renamed[f"encoder.{block}.{0 if layer == 'conv' else 1}.{field}"] = tensor
    return renamed


def as_sample(task: Task, ways: int) -> tuple[dict, list[int]]:
    """Their episode layout: xs is ways x shots x C x H x W, class c at position c (their target c);
    ours is class-major with shuffled labels, so the positions are put in our label order."""
    order = [int(task.support_y.view(ways, -1)[c, 0]) for c in range(ways)]
    position = sorted(range(ways), key=lambda c: order[c])  # position of label 0, 1, ...
    xs = task.support_x.view(ways, -1, *task.support_x.shape[1:])[position]
    xq = task.query_x.view(ways, -1, *task.query_x.shape[1:])[position]
    return {"xs": xs, "xq": xq}, position


def episodes(config, split: str, ways: int, query: int, count: int, data_path: str | None):
    if data_path is None:
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        for _ in range(count):
            shape = (config.channels, config.image_size, config.image_size)
            labels = torch.randperm(ways, generator=generator)
            support_y = labels.repeat_interleave(config.shots)
            query_y = labels.repeat_interleave(query)
            yield Task(torch.rand(ways * config.shots, *shape, generator=generator, dtype=torch.float64), support_y,
                       torch.rand(ways * query, *shape, generator=generator, dtype=torch.float64), query_y)
        return
    dataset, refs = data.load(config.replace(data=data_path), progress=False)
    sampler = data.sampler(config, dataset, refs, split, config.seed if split == "train" else config.eval_seed,
                           query=query, ways=ways, dtype=torch.float64)
    for index in range(count):
        yield sampler.batch(index, 1)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="a copy of jakesnell/prototypical-networks (the folder holding protonets/)")
    parser.add_argument("--preset", default="protonet-omniglot-5w1s")
    parser.add_argument("--data", default=None, help="a dataset for the preset (default: random images)")
    parser.add_argument("--tasks", type=int, default=3, help="training episodes, then as many test episodes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = apply_overrides(load_preset(args.preset), parse_overrides(args.set))
    ours = algorithms.build(config).double().train()
    theirs = reference_model(args.reference, config).double().train()
    missing, unexpected = theirs.load_state_dict(ours_to_theirs(ours.state_dict()), strict=False)
    assert unexpected == [] and all(name.endswith("num_batches_tracked") for name in missing), (missing, unexpected)
    gradient, scale, running = {}, {}, {}
    for task in episodes(config, "train", config.ways, config.query, args.tasks, args.data):
        sample, _ = as_sample(task, config.ways)
        ours.zero_grad()
        theirs.zero_grad()
        ours.meta_gradient([task], 0)
        loss, _ = theirs.loss(sample)
        loss.backward()
        distances.clear()
        their_tensors = dict(theirs.named_parameters()) | dict(theirs.named_buffers())
        for name, parameter in ours.named_parameters():
            other = their_tensors[ours_to_theirs({name: None}).popitem()[0]]
            difference = (parameter.grad - other.grad).abs().max().item()
            gradient[name] = max(gradient.get(name, 0.0), difference)
            scale[name] = max(scale.get(name, 0.0), parameter.grad.abs().max().item())
        for name, buffer in ours.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                difference = (buffer - their_tensors[ours_to_theirs({name: None}).popitem()[0]]).abs().max().item()
                running[name] = max(running.get(name, 0.0), difference)
        # the same step of the same optimizer on both keeps them equal for the next episode
        with torch.no_grad():
            for name, parameter in ours.named_parameters():
                parameter -= 1e-3 * parameter.grad
                their_tensors[ours_to_theirs({name: None}).popitem()[0]].copy_(parameter)
    ours.eval()
    theirs.eval()
    evaluation = 0.0
    ways = eval_ways(config)
    for task in episodes(config, "test", ways, eval_query(config), args.tasks, args.data):
        sample, position = as_sample(task, ways)
        with torch.no_grad():
            theirs.loss(sample)
            our_logits = ours.predict(ours.adapt(task.support_x, task.support_y), sample["xq"].flatten(0, 1))
        their_log_p = F.log_softmax(-distances.pop(), 1)  # as their loss goes on from euclidean_dist
        # their class positions are our labels in order, so their column c is our label c
        evaluation = max(evaluation, (F.log_softmax(our_logits, 1) - their_log_p).abs().max().item())
    print(json.dumps({"preset": args.preset, "data": args.data or "random images", "tasks": args.tasks,
                      "dtype": "float64", "torch": torch.__version__,
                      "overrides": args.set, "largest_gradient_difference": gradient, "largest_gradient": scale, "largest_running_statistics_difference": running,
                      "largest_eval_log_probability_difference": evaluation}, indent=1))


if __name__ == "__main__":
    main()
