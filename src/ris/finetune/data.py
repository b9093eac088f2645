"""What a fine-tune trains on: rows of a cached matrix (embeddings or activation maps), or image files with timm's
training augmentation; each item is (input, class id)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ris.images import open_image


class CachedRows(Dataset):
    """Rows of a memory-mapped matrix, as float32. Activation maps (channels x height x width) can be augmented for
    free: with ``hflip`` a map is flipped left-right half of the time (nearly the map of the mirrored image:
    convolutions are close to mirror-symmetric); with ``crop`` (the smallest share of each side kept) a random
    window of it is resized back to full size, as a random resized crop of the image would be."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray, targets: np.ndarray, hflip: bool = False,
                 crop: float | None = None) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.hflip = hflip and matrix.ndim == 4
        self.crop = crop if matrix.ndim == 4 else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        value = torch.from_numpy(np.array(self.matrix[self.rows[item]], dtype=np.float32))
        if self.hflip and torch.rand(()) < 0.5:
            value = value.flip(-1)
        if self.crop is not None:
            value = random_resized_window(value, self.crop)
        return value, self.targets[item]


def random_resized_window(activations: torch.Tensor, smallest: float) -> torch.Tensor:
    """A random window of a (channels x height x width) map, each side at least ``smallest`` of the map's, resized
    back to the map's size (bilinear)."""
    _, height, width = activations.shape
    sides = [int(torch.randint(max(1, math.ceil(smallest * side)), side + 1, ()).item()) for side in (height, width)]
    top = int(torch.randint(0, height - sides[0] + 1, ()).item())
    left = int(torch.randint(0, width - sides[1] + 1, ()).item())
    window = activations[:, top:top + sides[0], left:left + sides[1]]
    if tuple(window.shape[1:]) == (height, width):
        return window
    return F.interpolate(window[None], size=(height, width), mode="bilinear", align_corners=False)[0]


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
