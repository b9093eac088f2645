"""Operating points: the fastest query-time setting of an index that reaches a target recall.

Recall is measured against exact search on a seeded sample of the collection's vectors. A family's
``search_ladder`` lists its settings from fastest to most exact; recall grows along it, so the first setting that
reaches the target is the fastest that does.

Where the family can add rows after it is searchable (hnswlib, faiss IVF), the sample is held out of the build,
tuned on as outside queries, then added under its own row ids: a query that is already a node of an HNSW graph
finds its neighbours more easily than a new image does (on Caltech101 PCA-100, member queries tuned to 0.95 gave
outside queries 0.91-0.94). Other families (Annoy, faiss HNSW) tune on member queries, each leaving itself out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ris.config import OperatingPointConfig
from ris.index.base import NearestNeighbourIndex, as_float32
from ris.index.brute import BruteForceIndex

log = logging.getLogger("ris.index")

HELD_OUT = "held out of the build, added after tuning"
MEMBERS = "collection members, each leaving itself out"


@dataclass
class Tuning:
    """What tuning chose, and the recall of every setting it tried (in ladder order)."""

    target_recall: float
    k: int
    queries: int
    queries_from: str  # HELD_OUT or MEMBERS
    chosen: dict[str, Any]
    recall: float
    met: bool  # False: even the most exact setting stays below the target (it is kept, and reported)
    seconds: float
    tried: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def leave_self_out(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """``k + 1`` ids per row -> ``k``: each row's own id removed (or its last id, when the search missed itself)."""
    is_self = ids == self_ids[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones_like(ids, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    return ids[keep].reshape(len(ids), ids.shape[1] - 1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (rows of ``exact``) that ``found`` also holds, over all queries."""
    hits = (found[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)
    return float(hits.any(axis=1).sum() / max((exact >= 0).sum(), 1))


def walk_ladder(index: NearestNeighbourIndex, queries: np.ndarray, exact: np.ndarray, point: OperatingPointConfig,
                queries_from: str, self_ids: np.ndarray | None = None) -> Tuning:
    """Try ``index``'s settings in ladder order until recall against ``exact`` reaches the target; leave the index
    at the chosen one (the most exact when none does). With ``self_ids`` each query leaves itself out."""
    started = time.perf_counter()
    ladder = index.search_ladder(point.k)
    k = exact.shape[1]
    tried: list[dict[str, Any]] = []
    recall = 0.0
    for settings in ladder:
        index.set_search_params(**settings)
        if self_ids is None:
            found = index.search(queries, k)[0]
        else:
            found = leave_self_out(index.search(queries, k + 1)[0], self_ids)
        recall = recall_at_k(found, exact)
        tried.append({**settings, "recall": recall})
        if recall >= point.target_recall:
            break
    assert point.target_recall is not None
    tuning = Tuning(point.target_recall, k, len(queries), queries_from, dict(ladder[len(tried) - 1]), recall,
                    recall >= point.target_recall, time.perf_counter() - started, tried)
    if not tuning.met:  # e.g. product quantisation, whose codes cap recall whatever is scanned
        log.warning("%s: no setting reaches recall@%d %.2f (best %.3f at %s); kept the most exact", index.name, k,
                    point.target_recall, recall, tuning.chosen)
    return tuning


def tune_to_recall(index: NearestNeighbourIndex, vectors: np.ndarray, point: OperatingPointConfig) -> Tuning | None:
    """Tune a built ``index`` (over ``vectors``) on member queries, each leaving itself out; None (and nothing
    changed) when there is no target or the family is exact."""
    if point.target_recall is None or not index.search_ladder(point.k) or len(vectors) < 2:
        return None
    rng = np.random.default_rng(point.seed)
    rows = np.sort(rng.choice(len(vectors), size=min(point.queries, len(vectors)), replace=False))
    queries = as_float32(vectors[rows])
    k = min(point.k, len(vectors) - 1)
    exact = leave_self_out(BruteForceIndex.build(vectors, index.metric).search(queries, k + 1)[0], rows)
    return walk_ladder(index, queries, exact, point, MEMBERS, self_ids=rows)


def build_at_operating_point(index: NearestNeighbourIndex, vectors: np.ndarray,
                             point: OperatingPointConfig) -> tuple[float, Tuning | None]:
    """Add ``vectors`` to the empty ``index`` and set it to ``point``; returns the build seconds (tuning not
    included) and the tuning record (None: untuned).

    The held-out sample is a tenth of the collection at most, so the index is built from nine tenths first.
    """
    held_out = min(point.queries, len(vectors) // 10)
    tunable = point.target_recall is not None and bool(index.search_ladder(point.k))
    if not (tunable and held_out >= 1 and index.accepts_rows_later()):
        started = time.perf_counter()
        index.add(vectors)
        index.finalize()
        build_seconds = time.perf_counter() - started
        return build_seconds, tune_to_recall(index, vectors, point) if tunable else None
    rng = np.random.default_rng(point.seed)
    is_held_out = np.zeros(len(vectors), dtype=bool)
    is_held_out[rng.choice(len(vectors), size=held_out, replace=False)] = True
    rest, rows = np.flatnonzero(~is_held_out), np.flatnonzero(is_held_out)
    started = time.perf_counter()
    index.add_rows(vectors[rest], rest)
    index.finalize()
    build_seconds = time.perf_counter() - started
    queries = as_float32(vectors[rows])
    k = min(point.k, len(rest))
    exact = rest[BruteForceIndex.build(vectors[rest], index.metric).search(queries, k)[0]]
    tuning = walk_ladder(index, queries, exact, point, HELD_OUT)
    started = time.perf_counter()
    index.add_rows(queries, rows)
    return build_seconds + time.perf_counter() - started, tuning
