"""Re-ranking: αQE and k-reciprocal on constructed cases, against the paper's all-pairs algorithm, leave-one-out,
over exact and approximate indexes, their evaluation, their config checks and their rows in the results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from ris.checks import checked_config
from ris.config import Config, ConfigError, EvalConfig, LatencyConfig, RerankerConfig, RerankEvalConfig
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.protocols import PROTOCOLS, QuerySet
from ris.evaluate.reranked import evaluate_reranked, evaluate_rerankers
from ris.evaluate.results import results_table, to_markdown
from ris.index import BruteForceIndex, HnswIndex
from ris.index.base import NearestNeighbourIndex
from ris.rerank import RERANKERS, RerankedIndex, build_reranker
from ris.rerank.k_reciprocal import _scale

REPO = Path(__file__).resolve().parents[2]
FAMILIES = [BruteForceIndex, HnswIndex]


def _on_circle(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def _clusters(count: int = 120, classes: int = 6, dim: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: plain search confuses them a little, so re-ranking has work to do."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    vectors = rng.normal(size=(classes, dim))[labels] + 0.7 * rng.normal(size=(count, dim))
    return vectors.astype(np.float32), labels


def _k_reciprocal_reference(vectors: np.ndarray, k1: int, k2: int, lambda_value: float, scale: float) -> np.ndarray:
    """Zhong et al.'s ``re_ranking`` over every pair of ``vectors`` (their published code, condensed), with the
    squared distances divided by one ``scale``: the final distance matrix."""
    original = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2) / scale
    rank = np.argsort(original, axis=1, kind="stable")
    half = int(np.around(k1 / 2))
    encodings = np.zeros_like(original)
    for node in range(len(vectors)):
        forward = rank[node, :k1 + 1]
        reciprocal = forward[np.where(rank[forward, :k1 + 1] == node)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            candidate_forward = rank[candidate, :half + 1]
            candidate_reciprocal = candidate_forward[np.where(rank[candidate_forward, :half + 1] == candidate)[0]]
            if len(np.intersect1d(candidate_reciprocal, reciprocal)) > 2 / 3 * len(candidate_reciprocal):
                expansion = np.append(expansion, candidate_reciprocal)
        expansion = np.unique(expansion)
        weights = np.exp(-original[node, expansion])
        encodings[node, expansion] = weights / weights.sum()
    if k2 != 1:
        encodings = np.stack([encodings[rank[node, :k2]].mean(axis=0) for node in range(len(vectors))])
    overlap = np.minimum(encodings[:, None, :], encodings[None, :, :]).sum(axis=2)
    return (1 - overlap / (2 - overlap)) * (1 - lambda_value) + original * lambda_value


# --- αQE ---------------------------------------------------------------------------------------------------------


def test_aqe_pulls_a_boundary_query_into_its_own_class() -> None:
    # On the unit circle: the query at 10 degrees; its nearest image (5) is of class A, the next three of class B,
    # the rest of A a little further. Expanded with that nearest image, the query moves to 7.5 degrees and all of
    # A comes first.
    gallery = _on_circle([5, 1, 0, -1, 16.5, 17.5, 18.5])
    labels = np.array(list("AAAABBB"))
    query = _on_circle([10])
    index = BruteForceIndex.build(gallery)
    plain = index.search(query, 4)[0][0]
    assert list(labels[plain]) == list("ABBB")
    for alpha in (0, 3):
        expanded = build_reranker("aqe", {"neighbours": 1, "alpha": alpha}).rerank(index, gallery, query, 4)[0]
        assert list(labels[expanded]) == list("AAAA") and expanded[0] == 0


def test_aqe_weights_neighbours_by_similarity_and_keeps_the_query_length() -> None:
    gallery = _on_circle([0, 90])
    query = 0.5 * _on_circle([45])
    index = BruteForceIndex.build(gallery)
    expanded = build_reranker("aqe", {"neighbours": 2, "alpha": 0}).expand(index, gallery, query)
    assert np.linalg.norm(expanded) == pytest.approx(0.5)  # scaled back to the query's own length
    np.testing.assert_allclose(expanded[0], 0.5 * _on_circle([45])[0], atol=1e-6)  # symmetric: direction unchanged
    # With alpha, the more similar neighbour (at 0 degrees, 20 from the query) pulls harder than the one at 90.
    query = _on_circle([20])
    expanded = build_reranker("aqe", {"neighbours": 2, "alpha": 3}).expand(index, gallery, query)
    plain = build_reranker("aqe", {"neighbours": 2, "alpha": 0}).expand(index, gallery, query)
    assert np.degrees(np.arctan2(expanded[0, 1], expanded[0, 0])) < np.degrees(np.arctan2(plain[0, 1], plain[0, 0]))


def test_aqe_ranking_does_not_depend_on_the_vectors_scale() -> None:
    vectors, _ = _clusters()
    reranker = build_reranker("aqe", {"neighbours": 3, "alpha": 3})
    ids = reranker.rerank(BruteForceIndex.build(vectors), vectors, vectors, 10, np.arange(len(vectors)))
    scaled = 7 * vectors
    assert (reranker.rerank(BruteForceIndex.build(scaled), scaled, scaled, 10, np.arange(len(vectors))) == ids).all()


# --- k-reciprocal ------------------------------------------------------------------------------------------------


def test_k_reciprocal_demotes_a_near_image_whose_own_neighbours_are_elsewhere() -> None:
    # The query at the origin. Images 0-3 (its class) lie together at distance 1-1.35 and each has the query among
    # its 4 nearest. Image 4 is nearer (0.8), but its class (5-10) is nearer still to it, so the query is not among
    # its 4 nearest: not a k-reciprocal neighbour, it drops behind the query's class.
    gallery = np.array([(1.0, 0.0), (1.1, 0.3), (1.15, -0.3), (1.35, 0.05), (-0.8, 0.0),
                        *[(-1.5 + 0.05 * i, 0.1 * (i % 3 - 1)) for i in range(6)]], dtype=np.float32)
    query = np.zeros((1, 2), dtype=np.float32)
    index = BruteForceIndex.build(gallery)
    assert index.search(query, 1)[0][0, 0] == 4
    for k2 in (1, 3):
        reranker = build_reranker("k_reciprocal", {"k1": 4, "k2": k2, "lambda_value": 0.3, "candidates": 11})
        assert list(reranker.rerank(index, gallery, query, 5)[0]) == [0, 1, 2, 3, 4]
        # The same query as a gallery image of its own (leave-one-out): the same ranking, never itself.
        with_query = np.concatenate([gallery, query])
        ranked = reranker.rerank(BruteForceIndex.build(with_query), with_query, query, 5, np.array([11]))
        assert list(ranked[0]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), [(6, 3, 0.3), (4, 1, 0.1), (7, 4, 0.5)])
def test_k_reciprocal_leave_one_out_is_the_papers_algorithm(k1: int, k2: int, lambda_value: float) -> None:
    """With a shortlist of the whole gallery, leave-one-out re-ranking is exactly the all-pairs original (its
    distances divided by the same constant), the query's own row left out of its results."""
    vectors, _ = _clusters(count=60)
    final = _k_reciprocal_reference(vectors.astype(np.float64), k1, k2, lambda_value, _scale(vectors))
    np.fill_diagonal(final, np.inf)
    expected = np.argsort(final, axis=1, kind="stable")[:, :len(vectors) - 1]
    reranker = build_reranker("k_reciprocal", {"k1": k1, "k2": k2, "lambda_value": lambda_value,
                                               "candidates": len(vectors)})
    ranked = reranker.rerank(BruteForceIndex.build(vectors), vectors, vectors, len(vectors) - 1,
                             np.arange(len(vectors)))
    np.testing.assert_array_equal(ranked, expected)


def test_k_reciprocal_new_queries_stay_close_to_the_papers_algorithm() -> None:
    """A new query is not inserted into the gallery's neighbour lists (the approximation that lets them be built
    once): its top 10 still mostly agree with the all-pairs original run with the query inserted."""
    vectors, _ = _clusters(count=70)
    gallery, queries = vectors[:50], vectors[50:]
    reranker = build_reranker("k_reciprocal", {"k1": 6, "k2": 3, "lambda_value": 0.3, "candidates": 50})
    ranked = reranker.rerank(BruteForceIndex.build(gallery), gallery, queries, 10)
    agreement = []
    for row, query in enumerate(queries):
        final = _k_reciprocal_reference(np.concatenate([gallery, query[None]]).astype(np.float64), 6, 3, 0.3,
                                        _scale(gallery))[-1, :-1]
        agreement.append(len(set(ranked[row]) & set(np.argsort(final, kind="stable")[:10])) / 10)
    assert np.mean(agreement) >= 0.9


def test_k_reciprocal_reorders_only_its_shortlist() -> None:
    vectors, _ = _clusters()
    index = BruteForceIndex.build(vectors)
    plain = index.search(vectors[:5], 40)[0]
    ranked = build_reranker("k_reciprocal", {"k1": 6, "k2": 3, "candidates": 15}).rerank(index, vectors,
                                                                                           vectors[:5], 40)
    for row in range(5):
        assert set(ranked[row, :15]) == set(plain[row, :15])
        np.testing.assert_array_equal(ranked[row, 15:], plain[row, 15:])


def test_k_reciprocal_builds_the_gallery_lists_once_per_index() -> None:
    vectors, _ = _clusters()
    index = BruteForceIndex.build(vectors)
    reranker = build_reranker("k_reciprocal", {"k1": 6, "k2": 3})
    reranker.rerank(index, vectors, vectors[:3], 5)
    prepared = reranker.gallery
    reranker.rerank(index, vectors, vectors[3:6], 5)
    assert reranker.gallery is prepared
    other = BruteForceIndex.build(vectors[:50])
    reranker.rerank(other, vectors[:50], vectors[:3], 5)
    assert reranker.gallery is not prepared and len(reranker.gallery.space) == 50


# --- both methods ------------------------------------------------------------------------------------------------

METHODS = [("aqe", {"neighbours": 3, "alpha": 3}), ("k_reciprocal", {"k1": 8, "k2": 3, "candidates": 30})]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize(("method", "params"), METHODS, ids=[method for method, _ in METHODS])
def test_results_are_distinct_gallery_ids_and_never_the_query(family: type[NearestNeighbourIndex], method: str,
                                                               params: dict) -> None:
    vectors, _ = _clusters()
    count = len(vectors)
    reranker = build_reranker(method, params)
    index = family.build(vectors)
    for k in (1, 10, count - 1):
        ranked = reranker.rerank(index, vectors, vectors, k, np.arange(count))
        assert ranked.shape == (count, k)
        assert not (ranked == np.arange(count)[:, None]).any()
        assert ((ranked >= 0) & (ranked < count)).all()
        assert all(len(set(row)) == k for row in ranked)
    everything = reranker.rerank(index, vectors, vectors, count - 1, np.arange(count))
    assert all(sorted(row) == sorted(set(range(count)) - {query}) for query, row in enumerate(everything.tolist()))
    new = reranker.rerank(index, vectors, vectors[:4] + 0.01, count)  # new queries: the whole gallery, reordered
    assert all(sorted(row) == list(range(count)) for row in new.tolist())


@pytest.mark.parametrize(("method", "params"), METHODS, ids=[method for method, _ in METHODS])
def test_an_approximate_index_reranks_like_exact_search(method: str, params: dict) -> None:
    vectors, _ = _clusters()
    reranker = build_reranker(method, params)
    exact = reranker.rerank(BruteForceIndex.build(vectors), vectors, vectors, 10, np.arange(len(vectors)))
    reranker = build_reranker(method, params)
    graph = reranker.rerank(HnswIndex.build(vectors), vectors, vectors, 10, np.arange(len(vectors)))
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, graph, strict=True)])
    assert shared >= 0.95


def test_a_gallery_smaller_than_k_pads_with_minus_one() -> None:
    vectors, _ = _clusters(count=5)
    for method, params in METHODS:
        ranked = build_reranker(method, params).rerank(BruteForceIndex.build(vectors), vectors, vectors, 6,
                                                       np.arange(5))
        assert (ranked[:, 4:] == -1).all() and (ranked[:, :4] >= 0).all()


@pytest.mark.parametrize(("method", "params"), METHODS, ids=[method for method, _ in METHODS])
def test_reranked_index_serves_one_query_with_its_original_distances(method: str, params: dict) -> None:
    vectors, _ = _clusters()
    index = BruteForceIndex.build(vectors)
    served = RerankedIndex(build_reranker(method, params), index, vectors)
    query = vectors[:1] + 0.05
    ids, distances = served.search(query, 10)
    np.testing.assert_array_equal(ids, build_reranker(method, params).rerank(index, vectors, query, 10))
    np.testing.assert_allclose(distances[0], np.linalg.norm(vectors[ids[0]] - query, axis=1), rtol=1e-5)
    assert len(served) == len(vectors)


# --- evaluation --------------------------------------------------------------------------------------------------


def test_evaluation_reports_the_protocol_metrics_and_helps_on_clusters() -> None:
    vectors, labels = _clusters(count=150)
    cfg = EvalConfig(recall_ks=[1, 5])
    for name in ("book", "heldout"):
        query_set = PROTOCOLS[name].select(labels, np.where(np.arange(150) % 5 == 0, "test", "train"))
        index = BruteForceIndex.build(vectors[query_set.gallery])
        plain = evaluate_queries(index, vectors, labels, query_set, cfg)
        for method, params in (("aqe", {"neighbours": 3, "alpha": 0}), ("k_reciprocal", {"k1": 8, "k2": 3})):
            reranked = evaluate_reranked(build_reranker(method, params), index, vectors, labels, query_set, cfg)
            assert list(reranked) == [key for key in plain if key != "ann_recall_at_10"]
            assert reranked["queries"] == plain["queries"] and reranked["gallery_size"] == plain["gallery_size"]
            assert reranked["map_at_r"] > plain["map_at_r"]


def test_evaluation_with_an_identity_reranker_matches_the_index_alone() -> None:
    """The reranked evaluation path computes the same numbers as the index's own when nothing is re-ordered."""
    vectors, labels = _clusters(count=90)
    query_set = QuerySet(np.arange(90), np.arange(90), leave_one_out=True)
    index = BruteForceIndex.build(vectors)
    identity = build_reranker("k_reciprocal", {"k1": 4, "k2": 1, "lambda_value": 1.0, "candidates": 1})
    plain = evaluate_queries(index, vectors, labels, query_set, EvalConfig())
    reranked = evaluate_reranked(identity, index, vectors, labels, query_set, EvalConfig())
    assert reranked == {key: value for key, value in plain.items() if key != "ann_recall_at_10"}


def test_rerankers_run_only_on_the_indexes_named() -> None:
    vectors, labels = _clusters(count=60)
    everything = QuerySet(np.arange(60), np.arange(60), leave_one_out=True)
    index = BruteForceIndex.build(vectors)
    cfg = Config(rerankers={"aqe": RerankerConfig("aqe", {"neighbours": 2}), "kr": RerankerConfig("k_reciprocal")})
    cfg.eval.latency = LatencyConfig(queries=10, warmup=1)
    cfg.eval.rerank = RerankEvalConfig(rerankers=["kr", "aqe"], indexes=["brute"])
    results = evaluate_rerankers("brute", index, vectors, labels, {"book": (index, everything)}, cfg)
    assert [result.name for result in results] == ["kr", "aqe"]
    assert results[1].about == "αQE (neighbours=2, alpha=3.0)" and results[1].params == {"neighbours": 2, "alpha": 3.0}
    assert set(results[0].protocols) == {"book"}
    assert results[0].metrics["latency_p50_us"] > 0 and results[0].metrics["rerank_prepare_seconds"] > 0
    assert evaluate_rerankers("annoy", index, vectors, labels, {"book": (index, everything)}, cfg) == []


# --- configuration -----------------------------------------------------------------------------------------------


def _compose(overrides: list[str]) -> Config:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return checked_config(compose(config_name="config", overrides=overrides))


def test_every_conf_reranker_is_registered_and_evaluated_by_default() -> None:
    cfg = _compose([])
    assert {entry.method for entry in cfg.rerankers.values()} == set(RERANKERS) == {"aqe", "k_reciprocal"}
    assert set(cfg.eval.rerank.rerankers) == set(cfg.rerankers)
    assert set(cfg.eval.rerank.indexes) <= set(cfg.indexes)


@pytest.mark.parametrize(("overrides", "key", "allowed"), [
    (["rerankers.aqe.method=dba"], "rerankers.aqe.method", "aqe, k_reciprocal"),
    (["+rerankers.aqe.params.k1=3"], "rerankers.aqe.params.k1", "neighbours, alpha"),
    (["rerankers.aqe.params.neighbours=0"], "rerankers.aqe.params.neighbours", "positive integer"),
    (["rerankers.aqe.params.alpha=-1"], "rerankers.aqe.params.alpha", ">= 0"),
    (["rerankers.k_reciprocal.params.k2=30"], "rerankers.k_reciprocal.params.k2", "at most k1 (20)"),
    (["rerankers.k_reciprocal.params.lambda_value=2"], "rerankers.k_reciprocal.params.lambda_value", "between 0"),
    (["rerankers.k_reciprocal.params.candidates=0"], "rerankers.k_reciprocal.params.candidates", "positive"),
    (["eval.rerank.rerankers=[aqe,dba]"], "eval.rerank.rerankers[1]", "aqe, k_reciprocal"),
    (["eval.rerank.indexes=[brute,milvus]"], "eval.rerank.indexes[1]", "brute, annoy, hnsw"),
    (["+rerankers.none={method: aqe}"], "rerankers.none", "rows without re-ranking"),
])
def test_bad_rerank_config_is_rejected_naming_the_key(overrides: list[str], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _compose(overrides)
    assert f"'{key}'" in str(caught.value) and allowed in str(caught.value)


def test_another_reranker_is_one_catalogue_entry() -> None:
    cfg = _compose(["+rerankers.aqe5={method: aqe, params: {neighbours: 5, alpha: 0}}",
                    "eval.rerank.rerankers=[aqe5]", "eval.rerank.indexes=[annoy]"])
    assert cfg.rerankers["aqe5"].params == {"neighbours": 5, "alpha": 0}


# --- results table -----------------------------------------------------------------------------------------------


def test_reranked_rows_follow_their_cell_in_the_results_table(tmp_path: Path) -> None:
    cfg = EvalConfig(recall_ks=[1])
    protocol = {"precision_at_4": 0.5, "precision_at_1": 0.6, "map_at_r": 0.4, "recall_at_1": 0.6,
                "ann_recall_at_10": 1.0, "queries": 10, "gallery_size": 20}
    cell = {"vector_dim": 8, "explained_variance": 0.9, "index_build_seconds": 0.1, "index_bytes": 1e6,
            "latency_p50_us": 10.0, "latency_p95_us": 20.0, "latency_p99_us": 30.0, "qps": 1e5}
    without_recall = {key: value for key, value in protocol.items() if key != "ann_recall_at_10"}
    reranked = {"method": "aqe", "params": {"neighbours": 2}, "about": "αQE (neighbours=2, alpha=3)",
                "protocols": {name: {**without_recall, "map_at_r": 0.45} for name in ("book", "heldout")},
                "cell": {"latency_p50_us": 25.0, "latency_p95_us": 40.0, "latency_p99_us": 50.0, "qps": 4e4,
                         "rerank_prepare_seconds": 0.0, "rerank_evaluate_seconds": 1.5}}
    files = []
    for index, rerank in (("brute", {"aqe": reranked}), ("annoy", {})):
        path = tmp_path / f"auto-{index}.json"
        path.write_text(json.dumps({"backbone": "b", "dim": "auto", "index": index, "family": index, "cell": cell,
                                    "protocols": {"book": protocol, "heldout": protocol}, "rerank": rerank}))
        files.append(path)
    table = results_table(files, cfg)
    assert list(zip(table["index"], table["rerank"], table["protocol"], strict=True)) == [
        ("brute", "none", "book"), ("brute", "aqe", "book"), ("brute", "none", "heldout"),
        ("brute", "aqe", "heldout"), ("annoy", "none", "book"), ("annoy", "none", "heldout")]
    row = table.iloc[1]
    assert (row["map_at_r"], row["latency_p50_us"], row["vector_dim"]) == (0.45, 25.0, 8)  # own latency, cell's dim
    assert np.isnan(row["ann_recall_at_10"]) and row["rerank_settings"] == "αQE (neighbours=2, alpha=3)"
    markdown = to_markdown(table, cfg)
    assert markdown.count("| brute + aqe ") == 2 and markdown.count("`aqe`: αQE (neighbours=2, alpha=3)") == 2
    reranked_line = next(line for line in markdown.splitlines() if "brute + aqe" in line)
    assert "45.00 %" in reranked_line and "nan" not in reranked_line
