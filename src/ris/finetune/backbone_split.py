"""Split a timm backbone into a frozen trunk and a trainable tail, at a named module.

The tail's input (the trunk's output, "activations") can then be computed once and cached, so that training the
last blocks costs only their own forward and backward passes. A split is only accepted where it is exact: the
backbone must run its modules in the order they are listed (most timm CNNs do), which is checked on a random
image, so an architecture that does not is refused instead of being trained wrong.
"""

from __future__ import annotations

import torch
from torch import nn

from ris.config import ConfigError

EXPANDED = ("blocks", "features", "stages", "layers")
"""Children whose own children are units too (a timm EfficientNet's ``blocks``, a VGG's ``features``)."""


def forward_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's modules in forward order: its children, with ``blocks``-like sequences expanded."""
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
        raise ConfigError(f"config key 'finetune.tail_from' is {tail_from!r}, not a module of the backbone run in "
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
