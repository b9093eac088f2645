"""What a fine-tune trains on: rows of a cached matrix (embeddings or activation maps), or image files with timm's
training augmentation; each item is (input, class id)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ris.images import open_image


class CachedRows(Dataset):
    """Rows of a memory-mapped matrix, as float32; with ``hflip``, an activation map (channels x height x width)
    is flipped left-right half of the time: the map of a mirrored image, nearly (convolutions are close to
    mirror-symmetric), for free."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray, targets: np.ndarray, hflip: bool = False) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.hflip = hflip and matrix.ndim == 4

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        value = torch.from_numpy(np.array(self.matrix[self.rows[item]], dtype=np.float32))
        if self.hflip and torch.rand(()) < 0.5:
            value = value.flip(-1)
        return value, self.targets[item]


class ImageRows(Dataset):
    """Image files through ``transform`` (timm's training or eval transform)."""

    def __init__(self, paths: Sequence[Path], targets: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.paths = list(paths)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(open_image(self.paths[item])), self.targets[item]


class FineTuneData(pl.LightningDataModule):
    """Shuffled training batches (the last partial one dropped: batch norm and proxy losses need company) and the
    validation images in order."""

    def __init__(self, train: Dataset, val: Dataset, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=len(self.train_set) > self.batch_size, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 256), shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
