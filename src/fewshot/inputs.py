"""How images reach a trained model: the conversion its training images went through
(the checkpoint's `preprocessing`: side, channels, ink polarity, normalisation), or,
for a model that learned on embeddings (LEO), the embeddings the image backbone that
`fewshot embed` pretrained to make them gives (`image_inputs`).

A LEO model's backbone is a plain mapping (`backbone_of`), which torch saves and
loads with weights_only: {"config": the backbone's config as a mapping, "model": its
weights and batch-norm statistics, "preprocessing": how its images became its input,
"step": the pretraining step of those weights}. A shipped LEO model carries it in its
weights file (`zoo.ship`, key "backbone"); a LEO run finds it in the embed folder its
embeddings came from (`embed.embedding_weights`).
"""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, data, models
from .config import complete
from .data.episodes import to_float
from .errors import FewshotError


@dataclass(frozen=True)
class ImageInputs:
    """uint8 pixels N x `channels` x `size` x `size` -> a model's input (`convert`)."""
    size: int
    channels: int
    convert: Callable[[np.ndarray], torch.Tensor]

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return self.convert(pixels)


def trained_on_embeddings(state: dict) -> bool:
    return data.kind(state["config"].dataset).features


def backbone_of(state: dict) -> dict:
    """The image backbone of a checkpoint trained on embeddings (see the module docstring):
    the one it carries, else the one `fewshot embed` left beside its embeddings; a
    FewshotError if neither is there."""
    if state.get("backbone") is not None:
        return state["backbone"]
    from .data.images import home, read_dataset
    from .embed import embedding_weights
    from .runs import local, recorded_data
    config = state["config"]
    spec = recorded_data(config, state.get("data_location")) or ""
    where = Path(spec).expanduser()
    if not where.exists():  # a name under FEWSHOT_HOME
        where = home() / spec
    candidates = [where, where.parent, where.parent.parent]  # --data may name the crop's folder or a dataset's
    pretrained = next((found for found in map(embedding_weights, candidates) if found is not None), None)
    if pretrained is None:
        raise FewshotError(f"this run learned on embeddings ({where}) and the image backbone that made them (the "
                           f"pretrain.pt or pretrain-best.pt that `fewshot embed` writes beside them, as its "
                           f"embed.json names) is not there, so it cannot read images; keep the embed folder "
                           f"whole, or use a shipped LEO model, which carries its backbone")
    backbone = checkpoint.load(pretrained)
    backbone_config = backbone["config"]
    images = read_dataset(local(backbone["options"]["data"]), backbone_config.image_size)
    return {"config": backbone_config.to_dict(), "model": backbone["model"], "step": backbone["step"],
            "preprocessing": data.preprocessing(images, backbone_config)}


def backbone_network(backbone: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The backbone's network, with its weights, in evaluation mode."""
    model = models.build(complete(backbone["config"])).to(device)
    model.load_state_dict(backbone["model"])
    return model.eval()


def describe_backbone(backbone: dict) -> str:
    """A backbone in words, for a shipped model's card."""
    config = complete(backbone["config"])
    width = f"widths {config.widths}" if config.widths else f"{config.filters} filters"
    return (f"{config.model} ({width}, {backbone_network(backbone).features_size}-d features) pretrained by "
            f"`fewshot embed` on the {config.ways} meta-train classes of {config.dataset} ({config.split} split) at "
            f"{config.image_size}x{config.image_size}: the weights of pretraining step {backbone['step']}, carried "
            f"in the weights file")


def backbone_inputs(state: dict, device: torch.device) -> ImageInputs:
    """Images -> the embeddings a checkpoint trained on embeddings reads: its backbone's
    features for the run's crop (`embed.crop_features`, as `fewshot embed` wrote them)."""
    from .embed import crop_features
    config = state["config"]
    backbone = backbone_of(state)
    model = backbone_network(backbone, device)
    if model.features_size != config.embedding_dim:
        raise FewshotError(f"the image backbone found makes {model.features_size}-d embeddings, but this run reads "
                           f"{config.embedding_dim}-d ones; it is not the backbone of this run's embeddings")
    params = dict(model.named_parameters())
    preprocessing = backbone["preprocessing"]

    @torch.no_grad()
    def embed(pixels: np.ndarray) -> torch.Tensor:
        return crop_features(model, params, to_float(pixels, preprocessing).to(device), config.embedding_crop)

    return ImageInputs(preprocessing["size"], preprocessing["channels"], embed)


def image_inputs(state: dict, device: str | torch.device = "cpu") -> ImageInputs:
    """How image pixels become the input of the checkpoint `state` (see the module docstring)."""
    device = torch.device(device)
    if trained_on_embeddings(state):
        return backbone_inputs(state, device)
    preprocessing = state.get("preprocessing")
    if preprocessing is None:
        raise FewshotError(f"this run ({state['config'].preset}) was not trained on images, so it cannot read image "
                           f"files; give it tensors (fewshot.load(RUN).adapt(tensor, labels)), or use a model of "
                           f"images")
    return ImageInputs(preprocessing["size"], preprocessing["channels"],
                       lambda pixels: to_float(pixels, preprocessing).to(device))


__all__ = ["ImageInputs", "backbone_of", "backbone_network", "describe_backbone", "image_inputs"]
