"""Retrieval metrics over neighbour lists; every function names its protocol and denominator."""

from __future__ import annotations

import numpy as np

from ris.index.base import NearestNeighbourIndex


def leave_one_out_search(index: NearestNeighbourIndex, queries: np.ndarray, query_ids: np.ndarray,
                         k: int) -> np.ndarray:
    """Each query's ``k`` nearest gallery ids, the query's own id removed (the book's "excluding itself").

    The index is asked for ``k + 1``; when the query's own id is not among them (an approximate index may miss
    it, or a duplicate may displace it) the last neighbour is dropped instead.
    """
    ids, _ = index.search(queries, k + 1)
    is_self = ids == query_ids[:, None]
    # Drop the self hit where there is one, else the (k+1)-th neighbour; the order of the rest is kept.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(ids, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    return ids[keep].reshape(len(ids), k)


def precision_at_k(neighbour_ids: np.ndarray, query_labels: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean over queries of (same-class items among the first ``k`` neighbours) / ``k``; a -1 pad is a miss."""
    ids = neighbour_ids[:, :k]
    hits = (labels[ids] == query_labels[:, None]) & (ids >= 0)  # labels[-1] would be the last item's label
    return float(hits.mean())


def average_precision_at_r(neighbour_labels: np.ndarray, query_label: object, relevant: int) -> float:
    """AP@R of one query (Musgrave et al. 2020): mean of precision@i at each relevant rank i <= R, divided by R."""
    hits = np.zeros(relevant, dtype=bool)  # ranks past a short list (an index that found fewer) are misses
    found = neighbour_labels[:relevant] == query_label
    hits[:len(found)] = found
    precision_at_rank = np.cumsum(hits) / np.arange(1, relevant + 1)
    return float((precision_at_rank * hits).sum() / relevant)


def mean_average_precision_at_r(index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray) -> float:
    """MAP@R, leave-one-out: R is the number of other images of the query's class; singleton classes are skipped.

    Queries of one class share R, so each class is searched as one batch with ``k = R``.
    """
    scores: list[float] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        relevant = len(members) - 1
        if relevant == 0:
            continue
        neighbours = leave_one_out_search(index, vectors[members], members, relevant)
        # -1 pads (fewer than R found) are dropped, not looked up: labels[-1] is a real item's label.
        scores.extend(average_precision_at_r(labels[row[row >= 0]], label, relevant) for row in neighbours)
    return float(np.mean(scores))


def recall_against_exact(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-k neighbours that the approximate top-k also returns (mean over queries)."""
    k = exact_ids.shape[1]
    found = [len(np.intersect1d(approx, exact)) for approx, exact in zip(approximate_ids, exact_ids, strict=True)]
    return float(np.mean(found) / k)
