"""Exact search: every query against every vector, by faiss's exact kernels on the stored (memory-mapped) matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from ris.index.base import NearestNeighbourIndex
from ris.index.registry import register_index


@register_index
class BruteForceIndex(NearestNeighbourIndex):
    """Exact k-NN over every vector; the ground truth approximate indexes are measured against."""

    name: ClassVar[str] = "brute"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._vectors = np.empty((0, dim), dtype=np.float32)

    def add(self, vectors: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors

    def __len__(self) -> int:
        return len(self._vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self.prepare(queries)
        k_found = min(k, len(self))
        if k_found == 0:
            return np.full((len(queries), k), -1, dtype=np.int64), np.full((len(queries), k), np.inf, np.float32)
        # faiss's exact kernels on our own (possibly memory-mapped) matrix, no copy: fused distance and top-k,
        # SIMD for a few queries and BLAS for many. Measured against a minimal numpy search (README, "Index
        # families"): faster at PCA-100 (no separate partial sort over the gallery), within 1.2x at 1280-d.
        squared, ids = faiss.knn(queries, self._vectors, k_found, metric=faiss.METRIC_L2)
        distances = np.sqrt(np.maximum(squared, 0.0, out=squared), out=squared)  # in place: no copies
        if k_found < k:  # a gallery smaller than k: pad
            ids = np.pad(ids, ((0, 0), (0, k - k_found)), constant_values=-1)
            distances = np.pad(distances, ((0, 0), (0, k - k_found)), constant_values=np.inf)
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        np.save(folder / "vectors.npy", self._vectors)

    def _load_data(self, folder: Path) -> None:
        self._vectors = np.load(folder / "vectors.npy", mmap_mode="r")
