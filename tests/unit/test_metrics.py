"""Retrieval metrics on hand-computed cases, leave-one-out search, latency, the protocols and the declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ris.cell import Cell, evaluate_cell
from ris.config import Config, EvalConfig, IndexConfig, LatencyConfig, QuerySampleConfig
from ris.evaluate.declarations import cell_metrics, format_value, protocol_metrics
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.latency import measure_latency
from ris.evaluate.metrics import (
    average_precision_at_r,
    mean_average_precision_at_r,
    precision_at_k,
    ranked_neighbours,
    recall_against_exact,
    recall_at_k,
    same_class,
)
from ris.evaluate.protocols import PROTOCOLS, QuerySet, sample_queries
from ris.index import AnnoyIndex, BruteForceIndex, IndexStore
from ris.index.base import NearestNeighbourIndex
from ris.reduce import ReducedStore
from ris.reduce.pca import FeatureReducer

# Six points on a line; the gaps 1, 2, 4, 8, 16 make every point's distances to the others distinct (no ties).
LINE = np.array([0.0, 1.0, 3.0, 7.0, 15.0, 31.0], dtype=np.float32)[:, None]
LINE_LABELS = np.array(["A", "A", "B", "A", "B", "B"])
# Neighbours of each point, nearest first, itself excluded (label in brackets):
#   0 (A): 1(A) 3(B) 7(A) 15(B) 31(B)
#   1 (A): 0(A) 3(B) 7(A) 15(B) 31(B)
#   3 (B): 1(A) 0(A) 7(A) 15(B) 31(B)
#   7 (A): 3(B) 1(A) 0(A) 15(B) 31(B)
#  15 (B): 7(A) 3(B) 1(A) 0(A) 31(B)
#  31 (B): 15(B) 7(A) 3(B) 1(A) 0(A)
LINE_NEIGHBOURS = np.array([[1, 2, 3, 4, 5], [0, 2, 3, 4, 5], [1, 0, 3, 4, 5],
                            [2, 1, 0, 4, 5], [3, 2, 1, 0, 5], [4, 3, 2, 1, 0]])


class FixedIndex(NearestNeighbourIndex):
    """Returns preset neighbour rows whatever the query (to force cases a real index rarely produces)."""

    name: ClassVar[str] = "fixed"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__(dim=1)
        self.rows = np.asarray(rows, dtype=np.int64)

    def add(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.rows.max()) + 1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.rows[:len(queries), :k]
        return ids, np.zeros(ids.shape, dtype=np.float32)

    def _save_data(self, folder: Path) -> None:
        raise NotImplementedError

    def _load_data(self, folder: Path) -> None:
        raise NotImplementedError


class CountingIndex(BruteForceIndex):
    """Exact search that records the shape of every query batch and the k asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int]] = []

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((np.atleast_2d(queries).shape[0], k))
        return super().search(queries, k)


def _clusters(classes: int, per_class: int, dim: int = 8, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray,
                                                                                                         np.ndarray]:
    """Tight clusters around far-apart centres, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 10.0, size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(0.0, spread, (len(labels), dim))).astype(np.float32), labels


def _eval_cfg(**changes: Any) -> EvalConfig:
    return EvalConfig(**{"k": 4, "recall_ks": [1, 5], "ann_recall_k": 5,
                         "latency": LatencyConfig(queries=20, warmup=2), **changes})


def _book(index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray, cfg: EvalConfig | None = None):
    return evaluate_queries(index, vectors, labels, PROTOCOLS["book"].select(labels, None), cfg or _eval_cfg())


def _leave_one_out(index: NearestNeighbourIndex, queries: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    return ranked_neighbours(index, queries, self_ids, k)


def test_leave_one_out_on_the_line() -> None:
    """Brute search with the query itself removed gives the neighbour lists worked out by hand above."""
    neighbours = _leave_one_out(BruteForceIndex.build(LINE), LINE, np.arange(6), 5)
    np.testing.assert_array_equal(neighbours, LINE_NEIGHBOURS)


def test_precision_and_recall_at_k_on_the_line() -> None:
    """P@1, P@4, R@1 and R@2 of the six-point line, computed by hand from the table above."""
    matches = same_class(_leave_one_out(BruteForceIndex.build(LINE), LINE, np.arange(6), 4), LINE_LABELS,
                         LINE_LABELS)
    # P@1: first neighbours 1(A) 0(A) 1(A) 3(B) 7(A) 15(B) against A A B A B B -> hits 1 1 0 0 0 1 -> 3/6.
    assert precision_at_k(matches, 1) == pytest.approx(1 / 2, abs=1e-12)
    # P@4: same-class hits in the first four: 2, 2, 1, 2, 1, 2 -> (10 / 4) / 6 = 5/12.
    assert precision_at_k(matches, 4) == pytest.approx(5 / 12, abs=1e-12)
    # R@1 = P@1; R@2: a hit among the first two for 0, 1, 7 (1(A)), 15 (3(B)), 31; not for 3 (1(A) 0(A)) -> 5/6.
    assert recall_at_k(matches, 1) == pytest.approx(1 / 2, abs=1e-12)
    assert recall_at_k(matches, 2) == pytest.approx(5 / 6, abs=1e-12)


def test_map_at_r_on_the_line() -> None:
    """MAP@R of the line: both classes have 3 members, so R = 2 for every query.

    AP@R = (1/R) sum_{i<=R} P@i * rel_i:
      0 (A): A B -> (1*1 + 0) / 2 = 1/2      1 (A): A B -> 1/2          7 (A): B A -> (0 + 1/2*1) / 2 = 1/4
      3 (B): A A -> 0                       15 (B): A B -> (0 + 1/2) / 2 = 1/4     31 (B): B A -> 1/2
    Mean: (1/2 + 1/2 + 1/4 + 0 + 1/4 + 1/2) / 6 = 2/6 = 1/3.
    """
    index = BruteForceIndex.build(LINE)
    result = mean_average_precision_at_r(index, LINE, LINE_LABELS, LINE_LABELS, np.arange(6))
    assert result == pytest.approx(1 / 3, abs=1e-12)


def test_map_at_r_skips_singleton_classes() -> None:
    """A class with one member has no relevant item; it is left out, not scored 0 or NaN.

    The extra point at 100 is the farthest from every other point, so the R = 2 lists of the line do not change.
    """
    points = np.vstack([LINE, [[100.0]]]).astype(np.float32)
    labels = np.append(LINE_LABELS, "C")
    result = mean_average_precision_at_r(BruteForceIndex.build(points), points, labels, labels, np.arange(7))
    assert result == pytest.approx(1 / 3, abs=1e-12)


def test_heldout_queries_search_a_gallery_that_excludes_them() -> None:
    """Queries apart from the gallery: no self-exclusion, R = same-class gallery images.

    Gallery: the line's points 0, 1, 3, 7 (A A B A); queries 2.2 (label B) and 20.0 (label B); R = 1 (one B).
      2.2 -> 3(B) 1(A) 0(A) 7(A): P@1 1, P@4 1/4, R@1 1, R@2 1, AP@R 1.
      20.0 -> 7(A) 3(B) 1(A) 0(A): P@1 0, P@4 1/4, R@1 0, R@2 1, AP@R 0.
    """
    vectors = np.array([0.0, 1.0, 3.0, 7.0, 2.2, 20.0], dtype=np.float32)[:, None]
    labels = np.array(["A", "A", "B", "A", "B", "B"])
    splits = np.array(["train", "train", "val", "train", "test", "test"])
    query_set = PROTOCOLS["heldout"].select(labels, splits)
    np.testing.assert_array_equal(query_set.queries, [4, 5])
    np.testing.assert_array_equal(query_set.gallery, [0, 1, 2, 3])
    index = BruteForceIndex.build(vectors[query_set.gallery])
    metrics = evaluate_queries(index, vectors, labels, query_set, _eval_cfg(recall_ks=[1, 2], ann_recall_k=2))
    assert metrics["precision_at_1"] == 0.5 and metrics["precision_at_4"] == pytest.approx(1 / 4)
    assert metrics["recall_at_1"] == 0.5 and metrics["recall_at_2"] == 1.0
    assert metrics["map_at_r"] == 0.5
    assert (metrics["queries"], metrics["gallery_size"], metrics["ann_recall_at_2"]) == (2, 4, 1.0)


def test_heldout_needs_test_and_gallery_images() -> None:
    labels = np.array(["A", "A"])
    with pytest.raises(ValueError, match="split"):
        PROTOCOLS["heldout"].select(labels, None)
    with pytest.raises(ValueError, match="0 test"):
        PROTOCOLS["heldout"].select(labels, np.array(["train", "val"]))


@pytest.mark.parametrize("ranked, relevant, expected", [
    ([1, 0, 1], 2, 1 / 2),  # relevant at ranks 1 and 3; rank 3 is past R: (1*1 + 1/2*0) / 2
    ([0, 1, 1], 2, 1 / 4),  # relevant at ranks 2 and 3: (0 + 1/2*1) / 2
    ([1, 0, 1, 1], 3, 5 / 9),  # ranks 1, 3 in R = 3: (1 + 2/3) / 3
    ([1, 1, 0], 2, 1.0),  # perfect ranking
    ([0, 0, 1, 1], 2, 0.0),  # nothing relevant within R
    ([1], 2, 1 / 2),  # a short list: the missing rank is a miss
])
def test_average_precision_at_r_known_rankings(ranked: list[int], relevant: int, expected: float) -> None:
    """AP@R per Musgrave et al. (2020) on rankings worked out by hand."""
    assert average_precision_at_r(np.array(ranked, dtype=bool), relevant) == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_removes_self_wherever_it_is() -> None:
    """The query's own id is removed from any rank; the remaining order is kept."""
    index = FixedIndex(np.array([[5, 0, 7, 8], [1, 4, 6, 9], [3, 4, 6, 2]]))
    neighbours = _leave_one_out(index, np.zeros((3, 1)), np.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(neighbours, [[5, 7, 8], [4, 6, 9], [3, 4, 6]])


def test_leave_one_out_drops_last_when_self_is_missing() -> None:
    """When the index does not return the query itself, the (k+1)-th neighbour is dropped instead."""
    index = FixedIndex(np.array([[3, 4, 6], [2, 5, 1], [9, 8, 7]]))
    neighbours = _leave_one_out(index, np.zeros((3, 1)), np.array([0, 1, 7]), 2)
    # Query 0 misses itself (drop 6); query 1 finds itself at rank 3 (drop it); query 7 finds itself last.
    np.testing.assert_array_equal(neighbours, [[3, 4], [2, 5], [9, 8]])


def test_padding_is_never_a_hit() -> None:
    """An id of -1 (an index that found fewer than k) counts as a miss, not as the last item (labels[-1])."""
    labels = np.array([0, 0, 1, 1, 0])  # the last item shares query 0's label
    assert precision_at_k(same_class(np.array([[1, -1]]), labels[:1], labels), 2) == 0.5
    assert precision_at_k(same_class(np.array([[-1, -1]]), labels[:1], labels), 2) == 0.0
    assert recall_at_k(same_class(np.array([[-1, -1]]), labels[:1], labels), 2) == 0.0


def test_map_at_r_with_short_neighbour_lists() -> None:
    """MAP@R scores missing neighbours as misses: one class of 3 (R = 2), lists padded with -1.

    Query 0: [1, -1] -> (1 + 0) / 2 = 1/2; query 1: [-1, -1] -> 0; query 2: [0, 1] -> 1. Mean 1/2.
    """
    index = FixedIndex(np.array([[0, 1, -1], [1, -1, -1], [2, 0, 1]]))
    labels = np.array(["A", "A", "A"])
    result = mean_average_precision_at_r(index, np.zeros((3, 1)), labels, labels, np.arange(3))
    assert result == pytest.approx(1 / 2, abs=1e-12)


def test_recall_against_exact() -> None:
    """Shared ids per query over k, averaged; order does not matter."""
    approximate = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[1, 2, 9], [6, 5, 4]])
    assert recall_against_exact(approximate, exact) == pytest.approx((2 / 3 + 3 / 3) / 2, abs=1e-12)
    assert recall_against_exact(exact, exact) == 1.0
    assert recall_against_exact(np.array([[7, 8, 0]]), np.array([[1, 2, 3]])) == 0.0


def test_measure_latency_shape_and_calls() -> None:
    """One single-row search per timed query after the warm-up, with the configured k; ordered percentiles."""
    vectors, _ = _clusters(3, 5)
    index = CountingIndex.build(vectors)
    cfg = LatencyConfig(queries=40, warmup=3, threads=1, seed=0)  # more queries than rows: with replacement
    result = measure_latency(index, vectors, cfg, k=2)

    assert index.calls == [(1, 2)] * (3 + 40)
    assert 0 < result["latency_p50_us"] <= result["latency_p95_us"] <= result["latency_p99_us"]
    assert result["qps"] > 0
    assert set(result) == {spec.key for spec in cell_metrics() if spec.unit in ("us", "qps")}


def test_book_separated_clusters_brute() -> None:
    """Perfectly separated classes: every precision, R@k, MAP@R and recall is 1 for exact search."""
    vectors, labels = _clusters(4, 8)
    metrics = _book(BruteForceIndex.build(vectors), vectors, labels)
    assert metrics["precision_at_4"] == metrics["precision_at_1"] == metrics["map_at_r"] == 1.0
    assert metrics["recall_at_1"] == metrics["recall_at_5"] == metrics["ann_recall_at_5"] == 1.0
    assert (metrics["queries"], metrics["gallery_size"]) == (32, 32)


def test_book_annoy_matches_exact_on_easy_data() -> None:
    """On separated clusters an Annoy index that inspects the whole gallery also scores 1 everywhere."""
    vectors, labels = _clusters(4, 8)
    metrics = _book(AnnoyIndex.build(vectors, n_trees=10, search_k=10_000), vectors, labels)
    assert metrics["precision_at_4"] == metrics["map_at_r"] == metrics["ann_recall_at_5"] == 1.0


def test_book_recall_of_poor_annoy_is_below_one() -> None:
    """Recall is measured against exact search, not assumed: a one-tree Annoy with a tiny search_k misses some."""
    vectors, labels = _clusters(10, 30, dim=16, spread=5.0, seed=1)
    metrics = _book(AnnoyIndex.build(vectors, n_trees=1, search_k=1), vectors, labels)
    assert metrics["ann_recall_at_5"] < 0.9


def test_book_random_labels_low_precision() -> None:
    """Labels unrelated to the vectors give precision near chance (1/4 with four classes), far below 1."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(80, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=80)
    metrics = _book(BruteForceIndex.build(vectors), vectors, labels)
    assert metrics["precision_at_4"] < 0.5 and metrics["precision_at_1"] < 0.5 and metrics["map_at_r"] < 0.5
    assert metrics["ann_recall_at_5"] == 1.0  # still exact search


@pytest.mark.parametrize("k, recall_ks", [(4, [1, 5, 10]), (5, [2]), (1, [3, 1])])
def test_evaluation_returns_exactly_the_declared_metrics_for_any_k(k: int, recall_ks: list[int]) -> None:
    """Whatever eval.k and eval.recall_ks are, the evaluation returns the declared keys, in declared order."""
    vectors, labels = _clusters(3, 6)
    cfg = _eval_cfg(k=k, recall_ks=recall_ks)
    metrics = _book(BruteForceIndex.build(vectors), vectors, labels, cfg)
    assert list(metrics) == [spec.key for spec in protocol_metrics(cfg)]
    assert f"precision_at_{k}" in metrics and all(f"recall_at_{value}" in metrics for value in recall_ks)
    titles = [spec.title for spec in protocol_metrics(cfg)]
    assert f"mP@{k}" in titles and len(titles) == len(set(titles))


def test_format_value_by_unit() -> None:
    specs = {spec.key: spec for spec in [*protocol_metrics(EvalConfig()), *cell_metrics()]}
    assert format_value(specs["map_at_r"], 0.56571) == "56.57 %"
    assert format_value(specs["latency_p50_us"], 1234.4) == "1,234"
    assert format_value(specs["index_bytes"], 3_500_000) == "3.5"
    assert format_value(specs["index_build_seconds"], 0.456) == "0.46"
    assert format_value(specs["map_at_r"], None) == ""


def test_query_set_knows_when_its_gallery_is_everything() -> None:
    assert QuerySet(np.arange(3), np.arange(3), True).gallery_is_everything(3)
    assert not QuerySet(np.arange(1), np.array([1, 2]), False).gallery_is_everything(3)


def test_query_sample_is_seeded_sorted_and_keeps_the_gallery() -> None:
    everything = QuerySet(np.arange(100), np.arange(100), leave_one_out=True)
    sampled = sample_queries(everything, 30, seed=4)
    assert len(sampled.queries) == 30 and np.all(np.diff(sampled.queries) > 0)
    assert np.array_equal(sampled.queries, sample_queries(everything, 30, seed=4).queries)
    assert not np.array_equal(sampled.queries, sample_queries(everything, 30, seed=5).queries)
    assert sampled.gallery is everything.gallery and sampled.leave_one_out
    assert sample_queries(everything, None, seed=0) is everything
    assert sample_queries(everything, 100, seed=0) is everything


def test_evaluate_cell_measures_a_sample_of_queries_when_asked() -> None:
    """``eval.query_sample.size`` bounds the queries of every protocol; the gallery stays the whole collection."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 20)
    vectors = (rng.normal(size=(6, 8))[labels] * 5 + rng.normal(size=(120, 8))).astype(np.float32)
    splits = np.array(["train", "val", "test", "train", "train"] * 24)
    cfg = Config()
    cfg.eval.latency = LatencyConfig(queries=20, warmup=1)
    cfg.eval.rerank.rerankers = []
    cfg.eval.query_sample = QuerySampleConfig(size=15, seed=0)
    cell = Cell("toy", None, "brute", IndexConfig("brute"))
    reduced = ReducedStore(FeatureReducer(8, 8), vectors, {})
    index = IndexStore.build(vectors, cell.index, {})
    result = evaluate_cell(cell, reduced, index, labels, splits, cfg)
    assert result.protocols["book"]["queries"] == 15 and result.protocols["book"]["gallery_size"] == 120
    assert result.protocols["heldout"]["queries"] == 15 and result.protocols["heldout"]["gallery_size"] == 96
