"""Exact search: every query against every vector, as one matrix product."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ris.index.base import NearestNeighbourIndex, as_float32, l2_normalize
from ris.index.registry import register_index


@register_index
class BruteForceIndex(NearestNeighbourIndex):
    """Exact k-NN by blocked matrix multiplication; the ground truth approximate indexes are measured against."""

    name: ClassVar[str] = "brute"
    defaults: ClassVar[dict[str, Any]] = {"block_size": 1024}

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._squared_norms = np.empty(0, dtype=np.float32)

    def add(self, vectors: np.ndarray) -> None:
        vectors = as_float32(vectors)
        if self.metric == "angular":
            vectors = as_float32(l2_normalize(vectors))
        self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors
        self._squared_norms = np.einsum("ij,ij->i", self._vectors, self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = as_float32(np.atleast_2d(queries))
        if self.metric == "angular":
            queries = as_float32(l2_normalize(queries))
        k_found = min(k, len(self))
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        block = int(self.params["block_size"])
        for start in range(0, len(queries), block):
            chunk = queries[start:start + block]
            # |q - x|^2 = |q|^2 - 2 q.x + |x|^2, clipped at 0 against rounding.
            squared = (np.einsum("ij,ij->i", chunk, chunk)[:, None] - 2.0 * chunk @ self._vectors.T
                       + self._squared_norms[None, :])
            np.maximum(squared, 0.0, out=squared)
            if k_found < len(self):
                nearest = np.argpartition(squared, k_found - 1, axis=1)[:, :k_found]
            else:
                nearest = np.broadcast_to(np.arange(len(self)), (len(chunk), len(self)))
            nearest_squared = np.take_along_axis(squared, nearest, axis=1)
            order = np.argsort(nearest_squared, axis=1, kind="stable")
            ids[start:start + len(chunk), :k_found] = np.take_along_axis(nearest, order, axis=1)
            distances[start:start + len(chunk), :k_found] = np.sqrt(np.take_along_axis(nearest_squared, order, axis=1))
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        np.save(folder / "vectors.npy", self._vectors)

    def _load_data(self, folder: Path) -> None:
        self._vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        self._squared_norms = np.einsum("ij,ij->i", self._vectors, self._vectors)
