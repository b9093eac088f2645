"""The feature store: a memory-mappable float32 matrix, its row-aligned image table, and what produced them.

Light on purpose (numpy and pandas only): the stages after extraction read features without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ris.artifacts import REBUILD, ArtifactError, read_description, write_description
from ris.locks import locked
from ris.paths import atomic_folder

EMBEDDINGS_FILE = "embeddings.npy"
ROWS_FILE = "rows.parquet"
META_FILE = "meta.json"
FORMAT = "ris.features"
FORMAT_VERSION = 2


@dataclass
class FeatureSet:
    """Row-aligned embeddings (memory-mapped) and their image table (path, class, sha256, row).

    ``meta`` is the store's description: what the features are, never how long they took, so that re-extracting
    the same features writes the same files (and DVC re-runs nothing downstream). ``run`` says what the call that
    returned this set did (images embedded and reused, seconds, images/s, device); it is not stored.
    """

    embeddings: np.ndarray
    rows: pd.DataFrame
    meta: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.rows["class"].to_numpy()

    @property
    def key(self) -> str:
        """Identity of this exact matrix: extractor (model, weights, preprocessing) and images."""
        return str(self.meta["key"])


def read_meta(folder: Path, remedy: str = REBUILD) -> dict[str, Any]:
    """The checked description of the feature store in ``folder`` (without opening the matrix)."""
    return read_description(folder / META_FILE, FORMAT, FORMAT_VERSION, remedy)


def load_features(folder: Path, expect_key: str | None = None, remedy: str = REBUILD) -> FeatureSet:
    """Open a feature store (embeddings memory-mapped), checking it against its description.

    Raises:
        ArtifactError: missing, another format, another key than ``expect_key``, or matrix and table disagree.
    """
    with locked(folder, exclusive=False):  # never half of one version and half of the next
        return _load_features(folder, expect_key, remedy)


def _load_features(folder: Path, expect_key: str | None, remedy: str) -> FeatureSet:
    meta = read_meta(folder, remedy)
    if expect_key is not None and meta["key"] != expect_key:
        raise ArtifactError(f"{folder / META_FILE} holds features {meta['key']}, expected {expect_key}: {remedy}")
    try:
        embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
        rows = pd.read_parquet(folder / ROWS_FILE)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{folder}: cannot read the embeddings or their rows ({error}): {remedy}") from error
    if embeddings.shape != (meta["images"], meta["dim"]) or len(rows) != meta["images"]:
        raise ArtifactError(f"{folder}: embeddings {embeddings.shape} and {len(rows)} rows do not match the "
                            f"description ({meta['images']} x {meta['dim']}): {remedy}")
    return FeatureSet(embeddings, rows, meta)


def stored_key(folder: Path) -> str | None:
    """The key of the complete feature store in ``folder`` (None when there is none, or it is unreadable)."""
    try:
        return str(json.loads((folder / META_FILE).read_text())["key"])
    except (OSError, ValueError, KeyError):
        return None


def save_features(folder: Path, embeddings: np.ndarray, rows: pd.DataFrame, meta: dict[str, Any]) -> FeatureSet:
    """Write an in-memory feature store into ``folder`` (atomically) and return it loaded, checked.

    ``meta`` is the description without ``images`` and ``dim``, which come from ``embeddings``. Extraction writes
    its stores chunk by chunk instead; this serves matrices that fit in memory (a fine-tuned model's embeddings).
    """
    matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != len(rows):
        raise ValueError(f"{matrix.shape} embeddings for {len(rows)} rows")
    with atomic_folder(folder) as staging:
        np.save(staging / EMBEDDINGS_FILE, matrix)
        rows.reset_index(drop=True).assign(row=np.arange(len(rows))).to_parquet(staging / ROWS_FILE)
        write_description(staging / META_FILE, FORMAT, FORMAT_VERSION,
                          {**meta, "images": len(matrix), "dim": int(matrix.shape[1])})
    return load_features(folder, expect_key=meta["key"])
