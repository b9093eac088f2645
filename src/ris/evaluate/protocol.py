"""The evaluation protocols: what queries what, and which metrics come out."""

from __future__ import annotations

import numpy as np

from ris.config import EvalConfig
from ris.evaluate.latency import measure_latency
from ris.evaluate.metrics import leave_one_out_search, mean_average_precision_at_r, precision_at_k, recall_against_exact
from ris.index import BruteForceIndex
from ris.index.base import NearestNeighbourIndex


def evaluate_book(index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray,
                  cfg: EvalConfig) -> dict[str, float]:
    """The book's protocol: every collection image queries all others (itself excluded).

    Returns mean precision@k (the book's "accuracy", k=4), P@1, MAP@R, and recall@``recall_k`` of ``index``
    against exact search in the same metric, plus single-query latency of ``search(query, recall_k)``, so that
    recall and latency describe the same search budget (Annoy's default budget grows with k).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    query_ids = np.arange(len(vectors))
    neighbours = leave_one_out_search(index, vectors, query_ids, cfg.k)
    metrics = {f"book_precision_at_{cfg.k}": precision_at_k(neighbours, labels, labels, cfg.k),
               "book_precision_at_1": precision_at_k(neighbours, labels, labels, 1),
               "book_map_at_r": mean_average_precision_at_r(index, vectors, labels)}

    # The reference is always a fresh in-memory exact index, also for a (saved and reloaded) brute-force one.
    approximate = leave_one_out_search(index, vectors, query_ids, cfg.recall_k)
    exact = leave_one_out_search(BruteForceIndex.build(vectors, index.metric), vectors, query_ids, cfg.recall_k)
    metrics[f"recall_at_{cfg.recall_k}_vs_exact"] = recall_against_exact(approximate, exact)
    metrics.update(measure_latency(index, vectors, cfg.latency, cfg.recall_k))
    metrics.update({"queries": len(vectors), "gallery_size": len(index), "classes": int(len(np.unique(labels)))})
    return metrics


PROTOCOLS = {"book": evaluate_book}
