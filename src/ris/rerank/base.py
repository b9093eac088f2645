"""The one interface every re-ranking method implements, and a reranker over an index searched like an index.

A reranker sees the collection only through the :class:`~ris.index.base.NearestNeighbourIndex` interface
(``search(queries, k)``) and the gallery's vectors, so it works over every index family, exact or approximate, and
for a single query at serving time. It never forms an all-pairs distance matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ris.index.base import NearestNeighbourIndex
from ris.index.registry import UnknownSettingError


class InvalidSettingError(ValueError):
    """A re-ranking setting holds a value the method cannot use."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"'{setting}' {reason}")
        self.setting = setting
        self.reason = reason


class Reranker(ABC):
    """Re-orders (or replaces) an index's ranking of the gallery for each query.

    Subclasses declare ``name`` (the ``method`` of a ``rerankers`` entry), ``title`` (how reports name it) and
    the settings they accept in ``defaults``, and check their values in :meth:`check`.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        for setting in params:
            if setting not in self.defaults:
                raise UnknownSettingError(self.name, setting, list(self.defaults))
        self.params = {**self.defaults, **params}
        self.check()

    def check(self) -> None:
        """Reject setting values the method cannot use.

        Raises:
            InvalidSettingError: naming the setting.
        """
        return None  # a method without checks beyond its setting names

    def prepare(self, index: NearestNeighbourIndex, gallery_vectors: np.ndarray) -> None:
        """Do the one-off work a gallery needs (none by default); :meth:`rerank` does it when not done yet."""
        return None

    @abstractmethod
    def rerank(self, index: NearestNeighbourIndex, gallery_vectors: np.ndarray, queries: np.ndarray, k: int,
               self_ids: np.ndarray | None = None) -> np.ndarray:
        """The ``k`` best gallery ids of each query, best first (-1 pads when the gallery has fewer).

        Args:
            index: built over ``gallery_vectors``, in that order.
            gallery_vectors: the gallery, one row per indexed item.
            queries: one row per query, in the gallery's space.
            k: how many results per query.
            self_ids: leave-one-out: each query's own gallery id, never returned and never used as a neighbour.
        """

    def describe(self) -> str:
        """How a report names this reranker and its settings, e.g. ``αQE (n=2, alpha=3)``."""
        return f"{self.title} ({', '.join(f'{key}={value}' for key, value in self.params.items())})"


def search_excluding(index: NearestNeighbourIndex, queries: np.ndarray, k: int,
                     self_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k)``; with ``self_ids`` the query's own id is taken out of its ``k + 1`` results
    (the last one when an approximate index missed it), as :func:`ris.evaluate.metrics.ranked_neighbours` does."""
    if self_ids is None:
        return index.search(queries, k)
    ids, distances = index.search(queries, k + 1)
    is_self = ids == np.asarray(self_ids)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(ids, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    return ids[keep].reshape(len(ids), k), distances[keep].reshape(len(ids), k)


class RerankedIndex(NearestNeighbourIndex):
    """A reranker over a built index, searched like an index (latency is measured through it, and a searcher can
    serve it); distances are the original ones from the query to each result. Made from a built index, never
    saved."""

    name: ClassVar[str] = "reranked"

    def __init__(self, reranker: Reranker, index: NearestNeighbourIndex, gallery_vectors: np.ndarray) -> None:
        super().__init__(index.dim, index.metric)
        if len(gallery_vectors) != len(index):
            raise ValueError(f"the index holds {len(index)} items but the gallery has {len(gallery_vectors)}")
        self.reranker = reranker
        self.index = index
        self.gallery_vectors = gallery_vectors
        reranker.prepare(index, gallery_vectors)

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self.index.prepare(queries)
        ids = self.reranker.rerank(self.index, self.gallery_vectors, queries, k)
        gathered = self.index.prepare(self.gallery_vectors[np.maximum(ids, 0).ravel()]).reshape(*ids.shape, -1)
        distances = np.linalg.norm(gathered - queries[:, None, :], axis=2)
        return ids, np.where(ids >= 0, distances, np.inf).astype(np.float32)

    def add(self, vectors: np.ndarray) -> None:
        raise NotImplementedError("a reranked index is made over a built index; add to that index")

    def _save_data(self, folder: Path) -> None:
        raise NotImplementedError("a reranked index is not saved: save its index")

    def _load_data(self, folder: Path) -> None:
        raise NotImplementedError("a reranked index is not loaded: load its index")
