"""Training losses, by name: ``finetune.loss.name`` picks one, ``finetune.loss.params`` are its settings.

A loss registers itself here; every loss maps (embeddings, class ids) to a scalar and may own parameters (class
weights or proxies), which train with the head's learning rate. Factories import torch when called: config checks
read this registry without paying for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ris.config import ConfigError

if TYPE_CHECKING:
    from torch import nn

LossFactory = Callable[[int, int, dict[str, Any]], "nn.Module"]
LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Make a loss factory ``(classes, dim, params) -> nn.Module`` available under ``name``."""
    def register(factory: LossFactory) -> LossFactory:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = factory
        return factory
    return register


@register_loss("cross_entropy")
def _cross_entropy(classes: int, dim: int, params: dict[str, Any]) -> nn.Module:
    from ris.finetune.model import NormalisedSoftmaxLoss

    return NormalisedSoftmaxLoss(classes, dim, **params)


@register_loss("proxy_anchor")
def _proxy_anchor(classes: int, dim: int, params: dict[str, Any]) -> nn.Module:
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    return ProxyAnchorLoss(classes, dim, **{"margin": 0.1, "alpha": 32, **params})


@register_loss("arcface")
def _arcface(classes: int, dim: int, params: dict[str, Any]) -> nn.Module:
    from pytorch_metric_learning.losses import ArcFaceLoss

    return ArcFaceLoss(classes, dim, **{"margin": 28.6, "scale": 32, **params})


@register_loss("supcon")
def _supcon(classes: int, dim: int, params: dict[str, Any]) -> nn.Module:
    from pytorch_metric_learning.losses import SupConLoss

    return SupConLoss(**{"temperature": 0.1, **params})


def create_loss(name: str, classes: int, dim: int, params: dict[str, Any]) -> nn.Module:
    """The loss registered as ``name``, for ``classes`` classes of ``dim``-wide embeddings.

    Raises:
        KeyError: no loss of that name (config checks say so before work starts).
    """
    return LOSSES[name](classes, dim, dict(params))


def check_loss(name: str) -> None:
    """Reject a loss name no factory is registered under (the entry points that compose or fine-tune call this,
    before any work; the grid's stages do not, so they need not depend on this module).

    Raises:
        ConfigError: naming ``finetune.loss.name`` and the allowed values.
    """
    if name not in LOSSES:
        raise ConfigError(f"config key 'finetune.loss.name' is {name!r}; allowed values: {', '.join(LOSSES)}")
