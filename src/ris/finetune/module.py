"""The Lightning module of a fine-tune: trainable part of the backbone + projection, a loss, AdamW with linear
warm-up then cosine decay, and val MAP@R (val images query each other, leave-one-out) after every epoch."""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ris.evaluate.metrics import mean_average_precision_at_r, precision_at_k, ranked_neighbours, same_class
from ris.index.brute import BruteForceIndex

VAL_METRIC = "val/map_at_r"


def retrieval_scores(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MAP@R and P@1 of ``embeddings`` querying each other, each leaving itself out (exact Euclidean search)."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = BruteForceIndex.build(vectors, "euclidean")
    everyone = np.arange(len(labels))
    matches = same_class(ranked_neighbours(index, vectors, everyone, 1), labels, labels)
    return {"map_at_r": mean_average_precision_at_r(index, vectors, labels, labels, everyone),
            "precision_at_1": precision_at_k(matches, 1)}


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate's factor at ``step``: linear from ~0 to 1 over the warm-up, then a cosine down to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class FineTuneModule(pl.LightningModule):
    """``trunk`` (frozen, may be empty when inputs are cached) -> ``tail`` (trained) -> ``projection`` -> loss."""

    def __init__(self, trunk: nn.Module, tail: nn.Module, projection: nn.Module, loss: nn.Module, *,
                 lr: float, backbone_lr: float, weight_decay: float, warmup_epochs: int,
                 hparams: dict | None = None) -> None:
        super().__init__()
        self.trunk, self.tail, self.projection, self.loss = trunk, tail, projection, loss
        self.lr, self.backbone_lr, self.weight_decay, self.warmup_epochs = lr, backbone_lr, weight_decay, warmup_epochs
        self.save_hyperparameters(hparams or {})
        self._val_embeddings: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a batch of inputs (images, or what the trunk computed for them)."""
        return F.normalize(self.projection(self.tail(self.trunk(inputs))), dim=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self.loss(self.projection(self.tail(self.trunk(inputs))).float(), targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        self._val_embeddings.append(self(inputs).float().cpu())
        self._val_labels.append(targets.cpu())

    def on_validation_epoch_end(self) -> None:
        embeddings = torch.cat(self._val_embeddings).numpy()
        labels = torch.cat(self._val_labels).numpy()
        self._val_embeddings.clear()
        self._val_labels.clear()
        scores = retrieval_scores(embeddings, labels)
        self.log(VAL_METRIC, scores["map_at_r"], prog_bar=True)
        self.log("val/precision_at_1", scores["precision_at_1"])

    def configure_optimizers(self) -> dict:
        groups = [{"params": [p for p in self.tail.parameters() if p.requires_grad], "lr": self.backbone_lr},
                  {"params": [*self.projection.parameters(), *self.loss.parameters()], "lr": self.lr}]
        optimizer = torch.optim.AdamW([group for group in groups if group["params"]], weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(total, self.warmup_epochs * max(1, total // max(1, self.trainer.max_epochs or 1)))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
