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
COPY_ROWS = 65_536
"""Rows copied at a time between (memory-mapped) matrices: memory stays bounded whatever the collection's size."""


def copy_rows(source: np.ndarray, source_rows: np.ndarray, target: np.ndarray, target_rows: np.ndarray) -> None:
    """``target[target_rows] = source[source_rows]``, :data:`COPY_ROWS` rows at a time."""
    for start in range(0, len(target_rows), COPY_ROWS):
        stop = start + COPY_ROWS
        target[target_rows[start:stop]] = source[source_rows[start:stop]]


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

    @property
    def matrix(self) -> np.ndarray | None:
        """The cached embeddings, memory-mapped (None while the cache is empty)."""
        return self._matrix

    def find(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each hash: whether it is cached, and the cache row of each found one (in order), to read in chunks."""
        found = np.array([digest in self._row_of for digest in hashes], dtype=bool)
        rows = np.array([self._row_of[digest] for digest, hit in zip(hashes, found, strict=True) if hit], np.int64)
        return found, rows

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` under ``hashes`` (distinct; those already cached, by anyone, are skipped).

        The new files are written to a staging folder that then replaces the old one by two renames under the
        exclusive lock. A kill between the renames loses the cache (never a feature store), which only makes the
        next extraction slower. The old and new rows are copied into the new matrix a chunk at a time, so neither
        the cache nor ``vectors`` (which may be memory-mapped) is read into memory whole.
        """
        with locked(self.folder, exclusive=True):
            self._read()  # another process may have added rows since this one read the cache
            new_rows = np.array([row for row, digest in enumerate(hashes) if digest not in self._row_of], np.int64)
            if not len(new_rows):
                return
            old_count = len(self._hashes)
            all_hashes = self._hashes + [hashes[row] for row in new_rows]
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
            matrix = np.lib.format.open_memmap(staging / EMBEDDINGS_FILE, mode="w+", dtype=np.float32,
                                               shape=(len(all_hashes), vectors.shape[1]))
            if old_count:
                copy_rows(self._matrix, np.arange(old_count), matrix, np.arange(old_count))
            copy_rows(vectors, new_rows, matrix, old_count + np.arange(len(new_rows)))
            matrix.flush()
            del matrix
            pd.DataFrame({"sha256": all_hashes}).to_parquet(staging / HASHES_FILE)
            old = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".old", dir=self.folder.parent))
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(staging, self.folder)
            self._read()
        shutil.rmtree(old, ignore_errors=True)
