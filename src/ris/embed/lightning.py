"""Lightning pieces of extraction: the model wrapper, the image data module and the feature writer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ris.images import ImageReadError, open_image


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
    """Images decoded as people see them (:func:`ris.images.open_image`, as queries are), with their row number.

    With ``sha256`` (the catalogue's hash of each file), every file read is checked against it: the embedding is
    stored under that hash, so a file changed since it was catalogued (a folder catalogued in place, edited) stops
    extraction instead of being embedded under another image's identity.
    """

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 sha256: Sequence[str] | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.sha256 = None if sha256 is None else list(sha256)
        if self.sha256 is not None and len(self.sha256) != len(self.paths):
            raise ValueError(f"{len(self.sha256)} hashes for {len(self.paths)} image paths")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        path = self.paths[row]
        if self.sha256 is None:
            return self.transform(open_image(path)), row
        try:
            data = path.read_bytes()
        except OSError:
            return self.transform(open_image(path)), row  # open_image raises the one-line reason
        if hashlib.sha256(data).hexdigest() != self.sha256[row]:
            raise ImageReadError(f"{path}: its content changed since the collection was catalogued (sha256 differs): "
                                 "catalogue it again with `dvc repro -f download`")
        return self.transform(open_image(data, name=str(path))), row


class ImageDataModule(pl.LightningDataModule):
    """Serves a fixed list of image files, in order, for ``Trainer.predict``."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor], batch_size: int = 32,
                 num_workers: int = 2, sha256: Sequence[str] | None = None) -> None:
        super().__init__()
        self.dataset = ImageFileDataset(paths, transform, sha256)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)


class FeatureMatrixWriter(BasePredictionWriter):
    """Writes each batch's embeddings into a memory-mapped ``.npy`` at their row numbers, as they arrive.

    The matrix is created on the first batch (its shape after the rows is the model's output: a width, or the
    channels x height x width of activation maps) at ``path``, as ``dtype``; the caller renames it into place once
    prediction has finished, so an interrupted run leaves no file at the final path.
    """

    def __init__(self, path: Path, rows: int, dtype: type = np.float32) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.rows = rows
        self.dtype = dtype
        self.matrix: np.memmap | None = None
        self.written = 0

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        features = prediction["features"].cpu().numpy()
        if self.matrix is None:
            self.matrix = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                    shape=(self.rows, *features.shape[1:]))
        self.matrix[prediction["rows"].cpu().numpy()] = features
        self.written += len(features)

    def close(self) -> None:
        """Flush the matrix to disk."""
        if self.matrix is not None:
            self.matrix.flush()
            del self.matrix
            self.matrix = None
