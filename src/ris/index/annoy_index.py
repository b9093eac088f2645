"""Spotify's Annoy: a forest of random-projection trees, memory-mapped from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from annoy import AnnoyIndex as _Annoy

from ris.index.base import NearestNeighbourIndex, as_float32
from ris.index.registry import register_index


@register_index
class AnnoyIndex(NearestNeighbourIndex):
    """Approximate k-NN; ``n_trees`` trades build time and size for recall, ``search_k`` (-1: n_trees * k) trades
    query time for recall."""

    name: ClassVar[str] = "annoy"
    defaults: ClassVar[dict[str, Any]] = {"n_trees": 100, "search_k": -1, "seed": 0, "build_threads": 1}

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._annoy = _Annoy(dim, metric)
        self._annoy.set_seed(int(self.params["seed"]))
        self._size = 0

    def add(self, vectors: np.ndarray) -> None:
        for row in as_float32(vectors):
            self._annoy.add_item(self._size, row)
            self._size += 1

    def finalize(self) -> None:
        self._annoy.build(int(self.params["n_trees"]), n_jobs=int(self.params["build_threads"]))

    def __len__(self) -> int:
        return self._size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = as_float32(np.atleast_2d(queries))
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        search_k = int(self.params["search_k"])
        for row, query in enumerate(queries):
            found, found_distances = self._annoy.get_nns_by_vector(query, k, search_k, include_distances=True)
            ids[row, :len(found)] = found
            distances[row, :len(found)] = found_distances
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        self._annoy.save(str(folder / "annoy.ann"))

    def _load_data(self, folder: Path) -> None:
        self._annoy.load(str(folder / "annoy.ann"))  # memory-mapped: loading is instant at any size
        self._size = self._annoy.get_n_items()
