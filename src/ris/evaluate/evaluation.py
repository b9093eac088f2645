"""Evaluate an index under a protocol's query set, returning exactly the declared metrics."""

from __future__ import annotations

import numpy as np

from ris.config import EvalConfig
from ris.evaluate.declarations import protocol_metrics
from ris.evaluate.metrics import (
    mean_average_precision_at_r,
    precision_at_k,
    ranked_neighbours,
    recall_against_exact,
    recall_at_k,
    same_class,
)
from ris.evaluate.protocols import QuerySet
from ris.index.base import NearestNeighbourIndex
from ris.index.brute import BruteForceIndex


def evaluate_queries(index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray, query_set: QuerySet,
                     cfg: EvalConfig) -> dict[str, float]:
    """Accuracy of ``index`` (built over ``vectors[query_set.gallery]``, in that order) for the query set.

    Returns the metrics :func:`protocol_metrics` declares: mP@k, P@1, MAP@R, R@k, and recall of ``index`` against
    a fresh exact index over the same gallery, in the same metric.
    """
    if len(index) != len(query_set.gallery):
        raise ValueError(f"the index holds {len(index)} items but the gallery has {len(query_set.gallery)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries, query_labels = _rows(vectors, query_set.queries), labels[query_set.queries]
    gallery_labels = labels[query_set.gallery]
    # Leave-one-out: each query's own position in the gallery is excluded from its results.
    self_ids = None
    if query_set.leave_one_out:
        self_ids = np.searchsorted(query_set.gallery, query_set.queries)
        if (self_ids >= len(query_set.gallery)).any() or not np.array_equal(query_set.gallery[self_ids],
                                                                             query_set.queries):
            raise ValueError("leave-one-out queries must be members of the (sorted) gallery")
    deepest = max(cfg.k, 1, *cfg.recall_ks)
    matches = same_class(ranked_neighbours(index, queries, self_ids, deepest), query_labels, gallery_labels)
    values = {f"precision_at_{cfg.k}": precision_at_k(matches, cfg.k), "precision_at_1": precision_at_k(matches, 1),
              "map_at_r": mean_average_precision_at_r(index, queries, query_labels, gallery_labels, self_ids),
              **{f"recall_at_{k}": recall_at_k(matches, k) for k in cfg.recall_ks}}

    k = cfg.ann_recall_k
    approximate_ids = ranked_neighbours(index, queries, self_ids, k)
    # Exact search is its own ground truth: a brute-force index is not searched a second time.
    exact_ids = approximate_ids if isinstance(index, BruteForceIndex) else ranked_neighbours(
        BruteForceIndex.build(_rows(vectors, query_set.gallery), index.metric), queries, self_ids, k)
    values[f"ann_recall_at_{k}"] = recall_against_exact(approximate_ids, exact_ids)
    values.update({"queries": len(queries), "gallery_size": len(query_set.gallery)})
    return {spec.key: values[spec.key] for spec in protocol_metrics(cfg)}


def _rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``vectors[rows]``, without a copy when ``rows`` are all of them in order (the ``book`` protocol's queries and
    gallery): at a million 1280-d vectors, a copy is 5 GB."""
    if len(rows) == len(vectors) and (len(rows) == 0 or (rows[0] == 0 and bool((np.diff(rows) == 1).all()))):
        return vectors
    return vectors[rows]
