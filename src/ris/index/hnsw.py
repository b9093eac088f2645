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


@register_index
class HnswIndex(NearestNeighbourIndex):
    """Approximate k-NN on a hierarchical navigable small-world graph (hnswlib, squared L2 inside)."""

    name: ClassVar[str] = "hnsw"
    defaults: ClassVar[dict[str, Any]] = {"M": 16, "ef_construction": 200, "ef": 64, "seed": 0,
                                          "build_threads": 1}

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._graph = hnswlib.Index(space="l2", dim=dim)
        self._capacity = 0

    def add(self, vectors: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        size = len(self)
        if self._capacity == 0:
            self._capacity = size + len(vectors)
            self._graph.init_index(self._capacity, M=int(self.params["M"]),
                                   ef_construction=int(self.params["ef_construction"]),
                                   random_seed=int(self.params["seed"]))
        elif size + len(vectors) > self._capacity:
            self._capacity = size + len(vectors)
            self._graph.resize_index(self._capacity)
        self._graph.set_num_threads(int(self.params["build_threads"]))
        self._graph.add_items(vectors, np.arange(size, size + len(vectors)))
        self._graph.set_num_threads(1)  # searches: one thread per call
        self._graph.set_ef(int(self.params["ef"]))

    def __len__(self) -> int:
        return int(self._graph.get_current_count()) if self._capacity else 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self.prepare(queries)
        k_found = min(k, len(self))
        labels, squared = self._graph.knn_query(queries, k=k_found)
        ids = labels.astype(np.int64)
        distances = np.sqrt(np.maximum(squared, 0.0))
        if k_found < k:  # a gallery smaller than k: pad as every family does
            ids = np.pad(ids, ((0, 0), (0, k - k_found)), constant_values=-1)
            distances = np.pad(distances, ((0, 0), (0, k - k_found)), constant_values=np.inf)
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        self._graph.save_index(str(folder / INDEX_FILE))

    def _load_data(self, folder: Path) -> None:
        self._graph.load_index(str(folder / INDEX_FILE))
        self._capacity = int(self._graph.get_max_elements())
        self._graph.set_num_threads(1)
        self._graph.set_ef(int(self.params["ef"]))
