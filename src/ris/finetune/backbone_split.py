"""Split a timm backbone into a frozen trunk and a trainable tail, at a named module.

The tail's input (the trunk's output, "activations") can then be computed once and cached, so that training the
last blocks costs only their own forward and backward passes. A split is only accepted where it is exact: the
backbone must run its modules in the order they are listed (most timm CNNs do), which is checked on a random
image, so an architecture that does not is refused instead of being trained wrong.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ris.config import ConfigError

EXPANDED = ("blocks", "features", "stages", "layers")
"""Children whose own children are units too (a timm EfficientNet's ``blocks``, a VGG's ``features``)."""


class VitTokens(nn.Module):
    """A ViT's part before its blocks as one module: patch embedding, class/register tokens and position embedding
    (added by a method, not a module, so the ViT's children alone do not chain). It holds the ViT's own modules and
    parameters and runs timm's own method."""

    _pos_embed = VisionTransformer._pos_embed

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        for name in ("patch_embed", "pos_drop", "patch_drop", "norm_pre", "pos_embed", "cls_token", "reg_token",
                     "no_embed_class", "dynamic_img_size", "num_prefix_tokens"):
            setattr(self, name, getattr(vit, name))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))


class VitPool(nn.Module):
    """A ViT's part after its blocks' final norm: token pooling and the (classifier-free) head, as timm runs it."""

    pool = VisionTransformer.pool
    forward = VisionTransformer.forward_head

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        for name in ("attn_pool", "fc_norm", "head_drop", "head", "global_pool", "num_prefix_tokens",
                     "pool_include_prefix"):
            setattr(self, name, getattr(vit, name))


def forward_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's modules in forward order: its children, with ``blocks``-like sequences expanded (a ViT's
    token embedding and pooling each wrapped as one unit)."""
    if isinstance(model, VisionTransformer):
        blocks = [(f"blocks.{name}", block) for name, block in model.blocks.named_children()]
        return [("tokens", VitTokens(model)), *blocks, ("norm", model.norm), ("pool", VitPool(model))]
    units: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name in EXPANDED and isinstance(child, nn.Sequential):
            units.extend((f"{name}.{inner}", module) for inner, module in child.named_children())
        else:
            units.append((name, child))
    return units


class Trunk(nn.Sequential):
    """The frozen first part of the backbone (always in eval mode: batch norm statistics stay pretrained)."""

    def train(self, mode: bool = True) -> Trunk:
        return super().train(False)


def split_backbone(model: nn.Module, tail_from: str, input_size: tuple[int, int, int]) -> tuple[Trunk, nn.Sequential]:
    """``(trunk, tail)`` with ``tail(trunk(x)) == model(x)``; the tail starts at the module named ``tail_from``.

    Raises:
        ConfigError: ``tail_from`` names no unit, or the backbone does not run its units in order.
    """
    units = forward_units(model)
    names = [name for name, _ in units]
    if tail_from not in names:
        raise ConfigError(f"config key 'backbone.tail_from' is {tail_from!r}, not a module of the backbone run in "
                          f"order; allowed values: {', '.join(names)}")
    cut = names.index(tail_from)
    trunk, tail = Trunk(*[module for _, module in units[:cut]]), nn.Sequential(*[module for _, module in units[cut:]])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probe = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
        whole, split = model(probe), tail(trunk(probe))
    model.train(was_training)
    if whole.shape != split.shape or not torch.allclose(whole, split, atol=1e-4, rtol=1e-3):
        raise ConfigError(f"{type(model).__name__} does not run its modules in the order it lists them, so its last "
                          "blocks cannot be trained on cached activations: use finetune.depth=head or full")
    for parameter in trunk.parameters():
        parameter.requires_grad_(False)
    return trunk, tail
