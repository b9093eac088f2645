"""Lightning pieces of extraction: the model wrapper, the image data module and the feature writer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ris.images import open_image


class EmbeddingModule(pl.LightningModule):
    """A frozen backbone whose ``predict_step`` returns (optionally L2-normalised) pooled embeddings."""

    def __init__(self, backbone: torch.nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return torch.nn.functional.normalize(features, dim=1) if self.normalize else features

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        images, rows = batch
        return {"rows": rows, "features": self(images).float()}


class ImageFileDataset(Dataset):
    """Images decoded as people see them (:func:`ris.images.open_image`, as queries are), with their row number."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        return self.transform(open_image(self.paths[row])), row


class ImageDataModule(pl.LightningDataModule):
    """Serves a fixed list of image files, in order, for ``Trainer.predict``."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor], batch_size: int = 32,
                 num_workers: int = 2) -> None:
        super().__init__()
        self.dataset = ImageFileDataset(paths, transform)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)


class FeatureMatrixWriter(BasePredictionWriter):
    """Writes each batch's embeddings into a memory-mapped ``.npy`` at their row numbers, as they arrive.

    The matrix is created on the first batch (its width is the backbone's output) at ``path``; the caller renames it
    into place once prediction has finished, so an interrupted run leaves no file at the final path.
    """

    def __init__(self, path: Path, rows: int) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.rows = rows
        self.matrix: np.memmap | None = None
        self.written = 0

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        features = prediction["features"].cpu().numpy()
        if self.matrix is None:
            self.matrix = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                                    shape=(self.rows, features.shape[1]))
        self.matrix[prediction["rows"].cpu().numpy()] = features
        self.written += len(features)

    def close(self) -> None:
        """Flush the matrix to disk."""
        if self.matrix is not None:
            self.matrix.flush()
            del self.matrix
            self.matrix = None
