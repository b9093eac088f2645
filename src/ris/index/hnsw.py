"""HNSW graphs by hnswlib: the fastest single-query search measured here (README, "Index families").

``M`` (links per node) and ``ef_construction`` set graph quality, size and build time; ``ef`` (the search's
candidate list, at least k) trades query time for recall. Built on one thread with a fixed seed, the graph is the
same on every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import hnswlib
import numpy as np

from ris.index.base import NearestNeighbourIndex
from ris.index.registry import register_index

INDEX_FILE = "hnsw.bin"
EF_LADDER = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)


@register_index
class HnswIndex(NearestNeighbourIndex):
    """Approximate k-NN on a hierarchical navigable small-world graph (hnswlib, squared L2 inside)."""

    name: ClassVar[str] = "hnsw"
    defaults: ClassVar[dict[str, Any]] = {"M": 16, "ef_construction": 200, "ef": 64, "seed": 0,
                                          "build_threads": 1}
    search_settings: ClassVar[tuple[str, ...]] = ("ef",)

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._graph = hnswlib.Index(space="l2", dim=dim)
        self._capacity = 0
        self._size = 0  # kept here: hnswlib's own count is a slower call, made on every search

    def add(self, vectors: np.ndarray) -> None:
        self.add_rows(vectors, np.arange(self._size, self._size + len(vectors)))

    def accepts_rows_later(self) -> bool:
        return True

    def add_rows(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        size = self._size + len(vectors)
        if self._capacity == 0:
            self._capacity = size
            self._graph.init_index(self._capacity, M=int(self.params["M"]),
                                   ef_construction=int(self.params["ef_construction"]),
                                   random_seed=int(self.params["seed"]))
        elif size > self._capacity:
            self._capacity = size
            self._graph.resize_index(self._capacity)
        self._graph.set_num_threads(int(self.params["build_threads"]))
        self._graph.add_items(vectors, np.asarray(ids, dtype=np.int64))
        self._size = size
        self._graph.set_num_threads(1)  # searches: one thread per call
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._capacity:
            self._graph.set_ef(int(self.params["ef"]))

    def search_ladder(self, k: int) -> list[dict[str, Any]]:
        return [{"ef": ef} for ef in EF_LADDER if ef >= k]  # hnswlib searches with max(ef, k) anyway

    def __len__(self) -> int:
        return self._size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Lean on purpose: a query takes ~10 us at Caltech101 scale, and each Python or numpy call here ~0.3 us.
        # hnswlib reads any float array itself (1-D, float64, strided), so Euclidean queries go to it as they are.
        if k <= self._size and self.metric == "euclidean":
            labels, squared = self._graph.knn_query(queries, k=k)
            return labels.view(np.int64), np.sqrt(squared, out=squared)  # uint64 ids < 2**63; squares never < 0
        k_found = min(k, self._size)
        labels, squared = self._graph.knn_query(self.prepare(queries), k=k_found)
        ids = labels.view(np.int64)
        distances = np.sqrt(squared, out=squared)
        if k_found < k:  # a gallery smaller than k: pad as every family does
            ids = np.pad(ids, ((0, 0), (0, k - k_found)), constant_values=-1)
            distances = np.pad(distances, ((0, 0), (0, k - k_found)), constant_values=np.inf)
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        self._graph.save_index(str(folder / INDEX_FILE))

    def _load_data(self, folder: Path) -> None:
        self._graph.load_index(str(folder / INDEX_FILE))
        self._capacity = int(self._graph.get_max_elements())
        self._size = int(self._graph.get_current_count())
        self._graph.set_num_threads(1)
        self._apply_search_params()
