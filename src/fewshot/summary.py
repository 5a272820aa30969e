"""`fewshot summary`: the network a preset builds, layer by layer."""
import torch

from . import models


def summary(config):
    model = models.build(config)
    x = torch.zeros(config["ways"] * config["shots"], config["channels"], config["image_size"], config["image_size"])
    trace = []
    with torch.no_grad():
        model.functional_forward(dict(model.named_parameters()), x, trace=trace)
    width = max(len(name) for name, _, _ in trace)
    lines = [f"{config.get('preset', '')}: {config['model']} ({config['downsample']}), "
             f"{config['ways']}-way input {tuple(x.shape)}",
             f"{'layer':{width}}  {'output shape':>20}  {'params':>10}"]
    lines += [f"{name:{width}}  {str(shape):>20}  {count:>10,}" for name, shape, count in trace]
    total = sum(p.numel() for p in model.parameters())
    lines.append(f"{'total':{width}}  {'':>20}  {total:>10,}")
    return "\n".join(lines)
