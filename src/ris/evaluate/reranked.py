"""Evaluate re-ranking on a grid cell: the same accuracy metrics as the index alone, under the same protocols, and
the reranker's own single-query latency (every index search it makes included)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ris.config import Config, EvalConfig
from ris.evaluate.declarations import protocol_metrics, rerank_metrics
from ris.evaluate.latency import measure_latency
from ris.evaluate.metrics import MAX_RESULT_IDS, average_precision_at_r, precision_at_k, recall_at_k, same_class
from ris.evaluate.protocols import QuerySet
from ris.index.base import NearestNeighbourIndex
from ris.rerank import RerankedIndex, Reranker, build_reranker

log = logging.getLogger("ris.evaluate")


@dataclass
class RerankResult:
    """One reranker on one cell: its ``rerankers`` key, method and effective settings (defaults filled in), metrics
    per protocol, and its own."""

    name: str
    method: str
    params: dict[str, Any]
    about: str  # how reports name it, settings included
    protocols: dict[str, dict[str, float]]
    metrics: dict[str, float]

    def report(self) -> dict[str, Any]:
        """Its part of the cell's metrics file."""
        return {"method": self.method, "params": self.params, "about": self.about, "protocols": self.protocols,
                "cell": self.metrics}


def evaluate_reranked(reranker: Reranker, index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray,
                      query_set: QuerySet, cfg: EvalConfig) -> dict[str, float]:
    """Accuracy of ``reranker`` over ``index`` (built over ``vectors[query_set.gallery]``) for the query set.

    The metrics of :func:`ris.evaluate.evaluation.evaluate_queries` but recall against exact search (re-ranking
    changes the ranking on purpose). Each class's queries are re-ranked together (in chunks of bounded memory, as
    MAP@R's own search), as deep as MAP@R needs (k = R, at least the deepest R@k): every metric comes from that one
    ranking per query.
    """
    if len(index) != len(query_set.gallery):
        raise ValueError(f"the index holds {len(index)} items but the gallery has {len(query_set.gallery)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    gallery, queries = _rows(vectors, query_set.gallery), _rows(vectors, query_set.queries)
    query_labels = labels[query_set.queries]
    gallery_labels = labels[query_set.gallery]
    self_ids = None
    if query_set.leave_one_out:  # each query's own gallery id: never returned, never a neighbour
        self_ids = np.searchsorted(query_set.gallery, query_set.queries)
        if (self_ids >= len(query_set.gallery)).any() or not np.array_equal(query_set.gallery[self_ids],
                                                                             query_set.queries):
            raise ValueError("leave-one-out queries must be members of the (sorted) gallery")
    deepest = max(cfg.k, 1, *cfg.recall_ks)
    matches = np.zeros((len(queries), deepest), dtype=bool)
    scores: list[float] = []
    gallery_counts = dict(zip(*np.unique(gallery_labels, return_counts=True), strict=True))
    order = np.argsort(query_labels, kind="stable")
    classes, starts = np.unique(query_labels[order], return_index=True)
    for label, members in zip(classes, np.split(order, starts[1:]), strict=True):
        relevant = int(gallery_counts.get(label, 0)) - (self_ids is not None)
        depth = max(relevant, deepest)
        chunk = max(1, MAX_RESULT_IDS // (depth + 1))  # bounded memory, as MAP@R's own search
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            ids = reranker.rerank(index, gallery, queries[part], depth, None if self_ids is None else self_ids[part])
            found = same_class(ids, query_labels[part], gallery_labels)
            matches[part] = found[:, :deepest]
            if relevant > 0:
                scores.extend(average_precision_at_r(row, relevant) for row in found)
    values = {f"precision_at_{cfg.k}": precision_at_k(matches, cfg.k), "precision_at_1": precision_at_k(matches, 1),
              "map_at_r": float(np.mean(scores)) if scores else float("nan"),
              **{f"recall_at_{k}": recall_at_k(matches, k) for k in cfg.recall_ks},
              "queries": len(queries), "gallery_size": len(query_set.gallery)}
    return {spec.key: values[spec.key] for spec in protocol_metrics(cfg) if spec.key in values}


def evaluate_rerankers(index_name: str, index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray,
                       searched: dict[str, tuple[NearestNeighbourIndex, QuerySet]], cfg: Config) -> list[RerankResult]:
    """Every reranker of ``eval.rerank.rerankers`` on a cell whose index is in ``eval.rerank.indexes`` (else none).

    Args:
        index_name: the cell's key of ``indexes``.
        index: the cell's index over all of ``vectors`` (latency is timed on it, as the index's own is).
        vectors: the cell's vectors, one row per feature-store row.
        labels: the class of each row.
        searched: per protocol, the index its queries search (built over its gallery) and its query set.
        cfg: the configuration (``rerankers`` and ``eval``).
    """
    if index_name not in cfg.eval.rerank.indexes:
        return []
    results = []
    for name in cfg.eval.rerank.rerankers:
        entry = cfg.rerankers[name]
        reranker = build_reranker(entry.method, entry.params)
        started = time.perf_counter()
        reranker.prepare(index, vectors)
        prepared = time.perf_counter() - started
        measured = {"rerank_prepare_seconds": prepared,
                    **measure_latency(RerankedIndex(reranker, index, vectors), vectors, cfg.eval.latency,
                                      cfg.eval.ann_recall_k)}
        protocols = {protocol: evaluate_reranked(reranker, protocol_index, vectors, labels, query_set, cfg.eval)
                     for protocol, (protocol_index, query_set) in searched.items()}
        measured["rerank_evaluate_seconds"] = time.perf_counter() - started
        log.info("re-ranking %s + %s (%s) took %.1f s", index_name, name, reranker.describe(),
                 measured["rerank_evaluate_seconds"])
        results.append(RerankResult(name, entry.method, dict(reranker.params), reranker.describe(), protocols,
                                    {spec.key: measured[spec.key] for spec in rerank_metrics()}))
    return results


def _rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``vectors[rows]``, without a copy when ``rows`` are all of them in order (the ``book`` protocol)."""
    if len(rows) == len(vectors) and np.array_equal(rows, np.arange(len(vectors))):
        return vectors
    return vectors[rows]
