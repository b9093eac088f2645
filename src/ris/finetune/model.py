"""The fine-tuned embedding model: one or more members (``finetune.members``), each a timm backbone (its last
blocks, or all of it, trained) and a learned projection, L2-normalised, optionally beside the frozen pretrained
backbone (``finetune.pretrained_weight``). The searcher and extraction use it as they use a pretrained backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def projection_head(in_dim: int, out_dim: int | None, hidden_dim: int | None) -> nn.Module:
    """``in -> hidden -> out`` (batch norm and ReLU between), ``in -> out``, or nothing when ``out_dim`` is None."""
    if out_dim is None:
        return nn.Identity()
    if hidden_dim is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, out_dim))


class L2Normalize(nn.Module):
    """Unit-length rows (what extraction stores when ``backbone.normalize`` is on)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1)


def blend_embeddings(finetuned: torch.Tensor, pretrained: torch.Tensor, pretrained_weight: float) -> torch.Tensor:
    """Unit rows ``[sqrt(1 - w) f, sqrt(w) p]`` of the unit-length ``f`` and ``p``: the dot product of two blended
    rows is ``(1 - w)`` times their fine-tuned cosine similarity plus ``w`` times their pretrained one."""
    return torch.cat([(1 - pretrained_weight) ** 0.5 * F.normalize(finetuned, dim=1),
                      pretrained_weight ** 0.5 * F.normalize(pretrained, dim=1)], dim=1)


def ensemble_embeddings(members: Sequence[torch.Tensor]) -> torch.Tensor:
    """Unit rows ``[f_1, ..., f_N] / sqrt(N)`` of the members' unit rows: the dot product of two ensemble rows is
    the mean of the members' cosine similarities (one member: its own rows)."""
    return torch.cat(list(members), dim=1) / len(members) ** 0.5


class FineTunedMember(nn.Module):
    """One trained network: image batch -> backbone's pooled features (normalised first where the projection was
    trained on normalised features) -> projection -> unit-length embeddings."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, normalize_pooled: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooled = L2Normalize() if normalize_pooled else nn.Identity()
        self.projection = projection

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.pooled(self.backbone(images))), dim=1)


class FineTunedModel(nn.Module):
    """The fine-tuned embedding: its members' (``finetune.members``, trained from different seeds) concatenated
    (:func:`ensemble_embeddings`); with a ``pretrained`` backbone (frozen) and a weight above 0, blended with its
    unit-length embeddings (:func:`blend_embeddings`)."""

    def __init__(self, members: Sequence[FineTunedMember], pretrained: nn.Module | None = None,
                 pretrained_weight: float = 0.0) -> None:
        super().__init__()
        if not members:
            raise ValueError("a fine-tuned model needs at least one member")
        if (pretrained is None) != (pretrained_weight == 0):
            raise ValueError("a pretrained backbone needs a weight above 0, and a weight above 0 needs one")
        self.members = nn.ModuleList(members)
        self.pretrained = pretrained
        self.pretrained_weight = pretrained_weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        finetuned = ensemble_embeddings([member(images) for member in self.members])
        if self.pretrained is None:
            return finetuned
        return blend_embeddings(finetuned, self.pretrained(images), self.pretrained_weight)


class NormalisedSoftmaxLoss(nn.Module):
    """Cross-entropy with label smoothing over cosine similarities to learned class weights, times ``scale``
    (Zhai & Wu 2019, "Classification is a strong baseline for deep metric learning")."""

    def __init__(self, classes: int, dim: int, scale: float = 16.0, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = scale
        self.label_smoothing = label_smoothing

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.scale * F.normalize(embeddings, dim=1) @ F.normalize(self.weights, dim=1).T
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
