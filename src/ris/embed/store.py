"""The feature store: a memory-mappable float32 matrix, its row-aligned image table, and what produced them.

Light on purpose (numpy and pandas only): the stages after extraction read features without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EMBEDDINGS_FILE = "embeddings.npy"
ROWS_FILE = "rows.parquet"
META_FILE = "meta.json"


@dataclass
class FeatureSet:
    """Row-aligned embeddings (memory-mapped) and their image table (path, class, sha256, row)."""

    embeddings: np.ndarray
    rows: pd.DataFrame
    meta: dict[str, Any]

    @property
    def labels(self) -> np.ndarray:
        return self.rows["class"].to_numpy()


def load_features(folder: Path) -> FeatureSet:
    """Open a feature store (embeddings memory-mapped)."""
    return FeatureSet(np.load(folder / EMBEDDINGS_FILE, mmap_mode="r"), pd.read_parquet(folder / ROWS_FILE),
                      json.loads((folder / META_FILE).read_text()))


def stored_key(folder: Path) -> str | None:
    """The key of the complete feature store in ``folder`` (None when there is none)."""
    meta = folder / META_FILE
    return json.loads(meta.read_text()).get("key") if meta.exists() else None
