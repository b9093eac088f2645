"""Embeddings kept per image content hash, for one extractor (model, weights, preprocessing, precision).

When the collection grows or shrinks, extraction looks every image up here by its sha256 and embeds only the ones
it has never seen; identical files are embedded once. The cache lives outside DVC's outputs (which DVC deletes
before re-running a stage), under ``<artifacts>/cache/embeddings/<backbone>/<extractor key>/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ris.locks import locked

EMBEDDINGS_FILE = "embeddings.npy"
HASHES_FILE = "hashes.parquet"


class EmbeddingCache:
    """A float32 matrix and the sha256 of the image each row embeds.

    Several processes may use one cache: each reads it under its shared lock, and :meth:`add` re-reads it under
    the exclusive lock before writing, so one process's additions never overwrite another's.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with locked(folder, exclusive=False):
            self._read()

    def _read(self) -> None:
        self._hashes: list[str] = []
        self._matrix: np.ndarray | None = None
        if (self.folder / HASHES_FILE).is_file() and (self.folder / EMBEDDINGS_FILE).is_file():
            try:
                hashes = pd.read_parquet(self.folder / HASHES_FILE)["sha256"].tolist()
                matrix = np.load(self.folder / EMBEDDINGS_FILE, mmap_mode="r")
            except (OSError, ValueError, KeyError):
                hashes, matrix = [], None  # a damaged cache is only a slower extraction: start it afresh
            if matrix is not None and len(matrix) == len(hashes):
                self._hashes, self._matrix = hashes, matrix
        self._row_of = {digest: row for row, digest in enumerate(self._hashes)}

    def __len__(self) -> int:
        return len(self._hashes)

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each hash: whether it is cached, and the cached row (``found`` rows of the returned matrix)."""
        found = np.array([digest in self._row_of for digest in hashes], dtype=bool)
        rows = [self._row_of[digest] for digest, hit in zip(hashes, found, strict=True) if hit]
        width = 0 if self._matrix is None else self._matrix.shape[1]
        vectors = np.asarray(self._matrix[rows], dtype=np.float32) if rows else np.empty((0, width), np.float32)
        return found, vectors

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` under ``hashes`` (distinct; those already cached, by anyone, are skipped).

        The new files are written to a staging folder that then replaces the old one by two renames under the
        exclusive lock. A kill between the renames loses the cache (never a feature store), which only makes the
        next extraction slower.
        """
        with locked(self.folder, exclusive=True):
            self._read()  # another process may have added rows since this one read the cache
            new_rows = [row for row, digest in enumerate(hashes) if digest not in self._row_of]
            if not new_rows:
                return
            added = np.asarray(vectors[new_rows], dtype=np.float32)
            matrix = added if self._matrix is None else np.concatenate([np.asarray(self._matrix), added])
            all_hashes = self._hashes + [hashes[row] for row in new_rows]
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
            np.save(staging / EMBEDDINGS_FILE, matrix)
            pd.DataFrame({"sha256": all_hashes}).to_parquet(staging / HASHES_FILE)
            old = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".old", dir=self.folder.parent))
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(staging, self.folder)
            self._read()
        shutil.rmtree(old, ignore_errors=True)
