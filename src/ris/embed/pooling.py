"""Global pooling as a config choice: swap the pooling layer timm put in a model for average, max or GeM pooling.

timm builds every CNN with one ``SelectAdaptivePool2d`` (average by default); ``backbone.pool`` replaces it in place,
so the layers after it (ConvNeXt's head norm, VGG's pre-logits) still run and fine-tuning splits the model as before.
Models that pool otherwise (ViT's class token) keep their own pooling.
"""

from __future__ import annotations

import torch
from timm.layers import SelectAdaptivePool2d

from ris.config import ConfigError
from ris.embed.weights import WeightsSource, create_backbone

GEM_EPS = 1e-6  # GeM raises activations to the power p: clamp them positive first (the paper's choice)


class GlobalPool(torch.nn.Module):
    """Average, max or generalised-mean (GeM, Radenović et al. 2018) pooling over the spatial dimensions."""

    def __init__(self, kind: str, spatial_dims: tuple[int, ...], flatten: bool, gem_p: float = 3.0) -> None:
        super().__init__()
        self.kind = kind
        self.spatial_dims = spatial_dims
        self.flatten = flatten
        self.gem_p = gem_p

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        keepdim = not self.flatten
        if self.kind == "avg":
            return maps.mean(self.spatial_dims, keepdim=keepdim)
        if self.kind == "max":
            return maps.amax(self.spatial_dims, keepdim=keepdim)
        powered = maps.clamp(min=GEM_EPS).pow(self.gem_p)
        return powered.mean(self.spatial_dims, keepdim=keepdim).pow(1.0 / self.gem_p)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, p={self.gem_p}" if self.kind == "gem" else f"kind={self.kind}"


def _replaced(pool: SelectAdaptivePool2d, kind: str, gem_p: float) -> GlobalPool:
    # timm's pool flattens either in its own Flatten or inside a "fast" pool, and reads NCHW or NHWC maps.
    flatten = isinstance(pool.flatten, torch.nn.Flatten) or getattr(pool.pool, "flatten", False) is True
    spatial_dims = tuple(getattr(pool.pool, "dim", (2, 3)))
    return GlobalPool(kind, spatial_dims, flatten, gem_p)


def set_global_pool(model: torch.nn.Module, kind: str, gem_p: float = 3.0) -> torch.nn.Module:
    """Replace ``model``'s global pooling layer by ``kind`` pooling (``avg``, ``max`` or ``gem``), in place.

    Raises:
        ConfigError: the model has no timm pooling layer to replace (for example a ViT, which pools its class token).
    """
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, SelectAdaptivePool2d)]
    if len(found) != 1:
        raise ConfigError(f"config key 'backbone.pool' is {kind!r}, but {type(model).__name__} has "
                          f"{len(found) or 'no'} global pooling layers ris can replace (it pools in its own way): "
                          "leave backbone.pool null")
    name, pool = found[0]
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, _replaced(pool, kind, gem_p))
    return model


def pooled_backbone(source: WeightsSource, pool: str | None = None, gem_p: float = 3.0) -> torch.nn.Module:
    """The backbone of ``source`` (eval mode, classifier removed) with ``pool`` pooling, or its own when None."""
    model = create_backbone(source)
    return model if pool is None else set_global_pool(model, pool, gem_p)
