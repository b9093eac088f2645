"""αQE, average query expansion with similarity weights (Radenović, Tolias and Chum, "Fine-tuning CNN image
retrieval with no human annotation", TPAMI 2018).

The query is replaced by the L2-normalised sum of itself and its ``neighbours`` (the paper's n) nearest gallery
vectors, each weighted by its cosine similarity to the query to the power ``alpha``, and searched again. ``alpha``
0 is plain average query expansion (every neighbour counts the same); a large ``alpha`` trusts only near-duplicates.

The paper's vectors have unit norm. The pipeline's may not (the full embedding is, PCA without ``renormalize`` is
not), so similarities and the sum come from L2-normalised copies, and the new query is scaled back to the original
query's length: a Euclidean index over vectors of unequal length then ranks it on the same scale as the query it
replaces.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ris.index.base import NearestNeighbourIndex, as_float32, l2_normalize
from ris.rerank.base import InvalidSettingError, Reranker, search_excluding
from ris.rerank.registry import register_reranker

BATCH = 1024
"""Queries expanded at a time: bounds the (queries x neighbours x dimension) array of their neighbours' vectors."""


@register_reranker
class AlphaQueryExpansion(Reranker):
    """αQE: search with the similarity-weighted mean of the query and its ``neighbours`` nearest gallery vectors."""

    name: ClassVar[str] = "aqe"
    title: ClassVar[str] = "αQE"
    defaults: ClassVar[dict[str, Any]] = {"neighbours": 5, "alpha": 3.0}

    def check(self) -> None:
        count = self.params["neighbours"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidSettingError("neighbours", f"is {count!r}; it must be a positive integer")
        alpha = self.params["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise InvalidSettingError("alpha", f"is {alpha!r}; it must be a number >= 0")

    def expand(self, index: NearestNeighbourIndex, gallery_vectors: np.ndarray, queries: np.ndarray,
               self_ids: np.ndarray | None = None) -> np.ndarray:
        """The expanded queries (one row per query), in the index's space."""
        queries = index.prepare(queries)
        nearest, _ = search_excluding(index, queries, int(self.params["neighbours"]), self_ids)
        found = nearest >= 0
        vectors = index.prepare(gallery_vectors[np.maximum(nearest, 0).ravel()])
        vectors = l2_normalize(vectors).reshape(*nearest.shape, -1)
        unit_queries = l2_normalize(queries)
        similarity = np.einsum("qd,qnd->qn", unit_queries, vectors)
        # Negative similarities count as 0 (a fractional power of a negative number is undefined); 0 ** 0 is 1, so
        # alpha 0 still weighs every neighbour alike.
        weights = np.clip(similarity, 0.0, None) ** float(self.params["alpha"]) * found
        expanded = l2_normalize(unit_queries + np.einsum("qn,qnd->qd", weights, vectors))
        return as_float32(expanded * np.linalg.norm(queries, axis=1, keepdims=True))

    def rerank(self, index: NearestNeighbourIndex, gallery_vectors: np.ndarray, queries: np.ndarray, k: int,
               self_ids: np.ndarray | None = None) -> np.ndarray:
        results = []
        for start in range(0, len(queries), BATCH):
            part = slice(start, start + BATCH)
            own = None if self_ids is None else self_ids[part]
            results.append(search_excluding(index, self.expand(index, gallery_vectors, queries[part], own), k, own)[0])
        return np.concatenate(results) if results else np.empty((0, k), dtype=np.int64)
