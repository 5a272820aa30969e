"""`fewshot summary`: the network a preset builds, layer by layer, and the parameters
its algorithm learns besides the network (Meta-SGD's and MAML++'s learning rates,
LEO's encoder, relation network and decoder)."""
import torch

from . import algorithms
from .config import Config


def example_input(config: Config) -> torch.Tensor:
    """A support set's worth of zeros, shaped as the model's input."""
    rows = config.ways * config.shots
    if config.model == "none":
        return torch.zeros(rows, config.embedding_dim)
    if config.model == "mlp":
        return torch.zeros(rows, config.in_features)
    return torch.zeros(rows, config.channels, config.image_size, config.image_size)


def summary(config: Config) -> str:
    """The network of `config` as a table: layer, output shape, parameters; then the
    algorithm's own parameters and the total."""
    with torch.device("meta"):  # shapes and counts only: nothing is allocated, whatever the sizes
        algorithm = algorithms.build(config)
        model = algorithm.model
        x = example_input(config)
        trace = model.summary_rows(x)
    own = [(name, tuple(p.shape), p.numel()) for name, p in algorithm.named_parameters()
           if not name.startswith("model.")]
    width = max(len(name) for name, _, _ in trace + own + [("layer", 0, 0)])
    form = f" ({config.downsample})" if config.model == "conv4" else ""
    lines = [f"{config.preset or ''}: {config.algorithm}, {config.model}{form}, "
             f"{config.ways}-way input {tuple(x.shape)}",
             f"{'layer':{width}}  {'output shape':>20}  {'params':>10}"]
    lines += [f"{name:{width}}  {str(shape):>20}  {count:>10,}" for name, shape, count in trace]
    if own:
        lines.append(f"{config.algorithm}'s own parameters")
        lines += [f"{name:{width}}  {str(shape):>20}  {count:>10,}" for name, shape, count in own]
    total = sum(p.numel() for p in algorithm.parameters())
    lines.append(f"{'total':{width}}  {'':>20}  {total:>10,}")
    return "\n".join(lines)
