"""scikit-learn's k-d tree and ball tree: the exact space-partitioning searches chapter 4 of the book timed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.neighbors import BallTree, KDTree

from ris.index.base import NearestNeighbourIndex
from ris.index.registry import register_index


class _SklearnTreeIndex(NearestNeighbourIndex):
    """Exact k-NN through a scikit-learn tree. The tree is rebuilt from the saved vectors on load (milliseconds at
    Caltech101 scale), so no pickle is ever written or read."""

    defaults: ClassVar[dict[str, Any]] = {"leaf_size": 40}
    tree_class: ClassVar[type[KDTree] | type[BallTree]]

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._tree: KDTree | BallTree | None = None

    def add(self, vectors: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors
        self._tree = None  # stale: rebuilt by finalize

    def finalize(self) -> None:
        self._tree = self.tree_class(self._vectors, leaf_size=int(self.params["leaf_size"]))

    def __len__(self) -> int:
        return len(self._vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._tree is None:
            self.finalize()
        assert self._tree is not None
        queries = self.prepare(queries)
        k_found = min(k, len(self))
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        if k_found:
            found_distances, found = self._tree.query(queries, k=k_found)
            ids[:, :k_found] = found
            distances[:, :k_found] = found_distances
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        np.save(folder / "vectors.npy", self._vectors)

    def _load_data(self, folder: Path) -> None:
        self._vectors = np.load(folder / "vectors.npy")
        self.finalize()


@register_index
class KDTreeIndex(_SklearnTreeIndex):
    """Exact k-NN by a k-d tree: fast in few dimensions, no better than a scan in many."""

    name: ClassVar[str] = "kd_tree"
    tree_class = KDTree


@register_index
class BallTreeIndex(_SklearnTreeIndex):
    """Exact k-NN by a ball tree: nested hyperspheres, somewhat less sensitive to dimension than a k-d tree."""

    name: ClassVar[str] = "ball_tree"
    tree_class = BallTree
