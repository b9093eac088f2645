"""Retrieval metrics over ranked neighbour lists; queries and gallery are passed apart, each with its labels."""

from __future__ import annotations

import numpy as np

from ris.index.base import NearestNeighbourIndex


def ranked_neighbours(index: NearestNeighbourIndex, queries: np.ndarray, self_ids: np.ndarray | None,
                      k: int) -> np.ndarray:
    """Each query's ``k`` nearest gallery ids, nearest first (-1 pads when the index finds fewer).

    With ``self_ids`` (leave-one-out: the query's own gallery id) the index is asked for ``k + 1`` and the query's
    own id is removed; when it is not among them (an approximate index may miss it, or a duplicate may displace
    it) the last neighbour is dropped instead.
    """
    if self_ids is None:
        return index.search(queries, k)[0]
    ids, _ = index.search(queries, k + 1)
    is_self = ids == self_ids[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(ids, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    return ids[keep].reshape(len(ids), k)


def same_class(neighbour_ids: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Boolean matrix: is neighbour j of query i of the query's class (a -1 pad never is)."""
    return (gallery_labels[neighbour_ids] == query_labels[:, None]) & (neighbour_ids >= 0)


def precision_at_k(matches: np.ndarray, k: int) -> float:
    """Mean over queries of (same-class items among the first ``k``) / ``k``."""
    return float(matches[:, :k].mean())


def recall_at_k(matches: np.ndarray, k: int) -> float:
    """R@k: share of queries with at least one same-class item among the first ``k``."""
    return float(matches[:, :k].any(axis=1).mean())


def average_precision_at_r(hits: np.ndarray, relevant: int) -> float:
    """AP@R of one query (Musgrave et al. 2020): mean of precision@i at each relevant rank i <= R, divided by R.

    ``hits`` are the same-class flags of its ranked results; ranks past a short list count as misses.
    """
    padded = np.zeros(relevant, dtype=bool)
    padded[:min(len(hits), relevant)] = hits[:relevant]
    precision_at_rank = np.cumsum(padded) / np.arange(1, relevant + 1)
    return float((precision_at_rank * padded).sum() / relevant)


MAX_RESULT_IDS = 1 << 22
"""MAP@R asks for R results per query: at most this many result ids (4 M: 48 MB with their distances) are held at a
time, whatever the class sizes, by searching a class's queries in chunks."""


def mean_average_precision_at_r(index: NearestNeighbourIndex, queries: np.ndarray, query_labels: np.ndarray,
                                gallery_labels: np.ndarray, self_ids: np.ndarray | None, *,
                                max_ids: int = MAX_RESULT_IDS) -> float:
    """MAP@R: R is the number of same-class gallery images (less the query itself when leave-one-out).

    Queries whose R is 0 are skipped. Queries of one class share R, so they are searched together at k = R, in
    chunks of at most ``max_ids // (R + 1)`` queries (at least one): memory is bounded for any gallery, and the
    result is the same for any ``max_ids`` (each query's ranking does not depend on the others searched with it).
    """
    if not len(query_labels):
        return float("nan")
    # One sort groups the queries by class (members in row order), instead of one pass over them per class.
    gallery_counts = dict(zip(*np.unique(gallery_labels, return_counts=True), strict=True))
    order = np.argsort(query_labels, kind="stable")
    classes, starts = np.unique(query_labels[order], return_index=True)
    scores: list[float] = []
    for label, members in zip(classes, np.split(order, starts[1:]), strict=True):
        relevant = int(gallery_counts.get(label, 0)) - (self_ids is not None)
        if relevant <= 0:
            continue
        chunk = max(1, max_ids // (relevant + 1))
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            ids = ranked_neighbours(index, queries[part], None if self_ids is None else self_ids[part], relevant)
            matches = same_class(ids, query_labels[part], gallery_labels)
            scores.extend(average_precision_at_r(row, relevant) for row in matches)
    return float(np.mean(scores)) if scores else float("nan")


def recall_against_exact(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-k neighbours that the approximate top-k also returns (mean over queries)."""
    k = exact_ids.shape[1]
    found = [len(np.intersect1d(approx[approx >= 0], exact)) for approx, exact in
             zip(approximate_ids, exact_ids, strict=True)]
    return float(np.mean(found) / k)
