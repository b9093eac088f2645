"""Nearest-neighbour indexes on synthetic vectors: exact search against numpy, Annoy against exact, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from naive_search import naive_search

from ris.artifacts import ArtifactError
from ris.config import IndexConfig
from ris.evaluate.metrics import recall_against_exact
from ris.index import (
    INDEX_FAMILIES,
    AnnoyIndex,
    BallTreeIndex,
    BruteForceIndex,
    HnswIndex,
    IndexStore,
    KDTreeIndex,
    index_family,
)
from ris.index.base import NearestNeighbourIndex
from ris.index.registry import UnknownSettingError

DIM = 16


def _gaussian(rows: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def _clustered(rows: int, seed: int, clusters: int = 20, spread: float = 1.0) -> np.ndarray:
    """Points around fixed, well separated centres (the centres do not depend on ``seed``)."""
    centres = np.random.default_rng(12345).normal(0.0, 10.0, size=(clusters, DIM))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, clusters, rows)] + rng.normal(0.0, spread, (rows, DIM))).astype(np.float32)


EXACT_FAMILIES = ["brute", "kd_tree", "ball_tree"]


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
@pytest.mark.parametrize("family", EXACT_FAMILIES)
def test_exact_families_equal_naive_argsort(metric: str, family: str) -> None:
    """Exact search returns the numpy argsort of the full distance matrix, for many queries and for one."""
    gallery, queries = _gaussian(120, seed=1), _gaussian(30, seed=2)
    k = 10
    expected_ids, expected_distances = naive_search(gallery, queries, metric)
    # Precondition on the data: gaps among the first k + 1 far above float32 rounding (~1e-6), so the order is unique.
    assert np.diff(expected_distances[:, :k + 1], axis=1).min() > 2e-5

    index = index_family(family).build(gallery, metric)
    ids, distances = index.search(queries, k)
    one_ids, one_distances = index.search(queries[7], k)  # the single-query path a search service takes

    np.testing.assert_array_equal(one_ids[0], ids[7])
    np.testing.assert_allclose(one_distances[0], distances[7], rtol=1e-5, atol=1e-5)
    assert ids.shape == distances.shape == (30, k)
    assert ids.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(ids, expected_ids[:, :k])
    np.testing.assert_allclose(distances, expected_distances[:, :k], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(distances, axis=1) >= 0)  # nearest first


def test_brute_whole_gallery_is_sorted() -> None:
    """k equal to the gallery size (no argpartition) still orders every item nearest first."""
    gallery, queries = _gaussian(25, seed=3), _gaussian(4, seed=4)
    ids, distances = BruteForceIndex.build(gallery).search(queries, 25)
    expected_ids, expected_distances = naive_search(gallery, queries, "euclidean")
    assert np.diff(expected_distances, axis=1).min() > 2e-5  # no near-ties in the data
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4, atol=1e-4)


def test_brute_single_query_vector_and_self_match() -> None:
    """A 1-D query is one row; a gallery vector finds itself first at distance 0."""
    gallery = _gaussian(40, seed=5)
    ids, distances = BruteForceIndex.build(gallery).search(gallery[17], 3)
    assert ids.shape == (1, 3)
    assert ids[0, 0] == 17
    assert distances[0, 0] == pytest.approx(0.0, abs=1e-3)


def test_angular_ignores_vector_length() -> None:
    """Angular search is scale-free: scaling queries or gallery rows changes nothing."""
    gallery, queries = _gaussian(50, seed=6), _gaussian(5, seed=7)
    scales = np.random.default_rng(8).uniform(0.1, 10.0, size=(50, 1)).astype(np.float32)
    ids, distances = BruteForceIndex.build(gallery, "angular").search(queries, 5)
    scaled_ids, scaled_distances = BruteForceIndex.build(gallery * scales, "angular").search(queries * 3.0, 5)
    np.testing.assert_array_equal(ids, scaled_ids)
    np.testing.assert_allclose(distances, scaled_distances, rtol=1e-4, atol=1e-5)
    assert distances.max() <= 2.0 + 1e-5  # chord length between unit vectors


@pytest.mark.parametrize("cls", [BruteForceIndex, AnnoyIndex, HnswIndex, KDTreeIndex, BallTreeIndex])
def test_k_larger_than_gallery_pads(cls: type[NearestNeighbourIndex]) -> None:
    """Asking for more neighbours than exist fills the tail with id -1 and distance inf."""
    gallery = _gaussian(5, seed=9)
    ids, distances = cls.build(gallery).search(gallery[:2], 8)
    assert ids.shape == distances.shape == (2, 8)
    for row in range(2):
        assert sorted(ids[row, :5]) == [0, 1, 2, 3, 4]
        assert ids[row, 0] == row
    assert np.all(ids[:, 5:] == -1)
    assert np.all(np.isinf(distances[:, 5:]))
    assert np.all(np.isfinite(distances[:, :5]))


@pytest.mark.parametrize("cls", [BruteForceIndex, AnnoyIndex, HnswIndex, KDTreeIndex, BallTreeIndex])
def test_incremental_add_continues_ids(cls: type[NearestNeighbourIndex]) -> None:
    """Vectors added later get ids after the earlier ones, as if added in one call."""
    gallery = _gaussian(50, seed=10)
    index = cls(DIM)
    index.add(gallery[:30])
    index.add(gallery[30:])
    index.finalize()
    assert len(index) == 50
    ids, distances = index.search(gallery[[3, 41, 49]], 1)
    np.testing.assert_array_equal(ids[:, 0], [3, 41, 49])
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-3)


def test_brute_add_after_load_continues_ids(tmp_path: Path) -> None:
    """A loaded (memory-mapped) brute index still accepts more vectors, numbered after the saved ones."""
    gallery = _gaussian(30, seed=11)
    IndexStore.build(gallery[:20], IndexConfig("brute"), {}).save(tmp_path / "brute")
    index = IndexStore.load(tmp_path / "brute").index
    index.add(gallery[20:])
    assert len(index) == 30
    ids, _ = index.search(gallery[[5, 25]], 1)
    np.testing.assert_array_equal(ids[:, 0], [5, 25])


@pytest.mark.parametrize("family, params", [("brute", {}),
                                            ("annoy", {"n_trees": 5, "search_k": 200, "seed": 3}),
                                            ("hnsw", {"M": 8, "ef_construction": 50, "ef": 20}),
                                            ("faiss", {"factory": "IVF4,Flat", "nprobe": 2}),
                                            ("faiss", {"factory": "HNSW8", "ef_search": 16}),
                                            ("kd_tree", {"leaf_size": 5}), ("ball_tree", {})])
@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_store_round_trip(tmp_path: Path, family: str, params: dict, metric: str) -> None:
    """Results after :meth:`IndexStore.load` equal those before; the description names family, metric, settings,
    size, build time, footprint and provenance."""
    gallery, queries = _clustered(200, seed=12), _clustered(20, seed=13)
    store = IndexStore.build(gallery, IndexConfig(family, metric, params), {"features_key": "abc", "dim": "8"})
    before = store.index.search(queries, 7)
    store.save(tmp_path / "index")

    description = json.loads((tmp_path / "index" / "index.json").read_text())
    assert description["format"] == "ris.index" and description["family"] == family
    assert description["metric"] == metric
    assert description["size"] == 200 and description["dim"] == DIM
    assert description["params"] == {**INDEX_FAMILIES[family].defaults, **params}
    assert description["built_from"] == {"features_key": "abc", "dim": "8"}
    assert description["index_bytes"] == store.index_bytes > 0 and description["build_seconds"] >= 0

    loaded = IndexStore.load(tmp_path / "index", expect={"features_key": "abc"})
    assert type(loaded.index) is INDEX_FAMILIES[family]
    assert (len(loaded.index), loaded.index.dim, loaded.index.metric) == (200, DIM, metric)
    after = loaded.index.search(queries, 7)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_store_made_for_other_features_is_refused(tmp_path: Path) -> None:
    """Loading an index built from other features fails naming the file, both keys and what to run."""
    IndexStore.build(_gaussian(20, seed=1), IndexConfig("brute"), {"features_key": "old", "dim": "8"}).save(
        tmp_path / "index")
    with pytest.raises(ArtifactError) as caught:
        IndexStore.load(tmp_path / "index", expect={"features_key": "new", "dim": "8"})
    message = str(caught.value)
    assert "index.json" in message and "'old'" in message and "'new'" in message and "dvc repro" in message


def test_damaged_annoy_file_is_caught_on_load(tmp_path: Path) -> None:
    """A truncated Annoy file is an ArtifactError at load, never a silently smaller gallery."""
    IndexStore.build(_clustered(300, seed=2), IndexConfig("annoy", params={"n_trees": 5}), {}).save(tmp_path / "a")
    data = tmp_path / "a" / "annoy.ann"
    data.write_bytes(data.read_bytes()[: int(data.stat().st_size * 0.9)])
    with pytest.raises(ArtifactError, match="dvc repro"):
        IndexStore.load(tmp_path / "a")


def test_missing_store_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found: run `dvc repro`"):
        IndexStore.load(tmp_path / "nothing")


def test_registry() -> None:
    """Every family is registered under its name; an unknown name is a KeyError listing the known ones."""
    assert index_family("brute") is BruteForceIndex
    assert index_family("annoy") is AnnoyIndex
    assert set(INDEX_FAMILIES) == {"brute", "annoy", "hnsw", "faiss", "milvus", "kd_tree", "ball_tree"}
    with pytest.raises(KeyError, match="annoy, brute, faiss, hnsw, milvus, kd_tree, ball_tree"):
        index_family("scann")


@pytest.mark.parametrize("family, params", [("hnsw", {}), ("faiss", {"factory": "IVF16,Flat", "nprobe": 4}),
                                            ("faiss", {"factory": "HNSW16"}), ("annoy", {"n_trees": 20})])
def test_approximate_families_find_most_exact_neighbours(family: str, params: dict) -> None:
    """On clustered data each approximate family returns at least 90 % of exact search's top 10."""
    gallery, queries = _clustered(2000, seed=21), _clustered(100, seed=22)
    exact, _ = BruteForceIndex.build(gallery).search(queries, 10)
    found, distances = index_family(family).build(gallery, **params).search(queries, 10)
    assert recall_against_exact(found, exact) >= 0.9
    true_distances = np.linalg.norm(gallery[found] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(distances, true_distances, rtol=1e-3, atol=1e-3)  # real distances, not squared


def test_annoy_recall_on_clustered_data() -> None:
    """With enough trees Annoy finds nearly all exact top-10 neighbours; one tree and a tiny search_k find far fewer."""
    gallery, queries = _clustered(1000, seed=14), _clustered(100, seed=15)
    exact, _ = BruteForceIndex.build(gallery).search(queries, 10)

    many, many_distances = AnnoyIndex.build(gallery, n_trees=50, seed=0).search(queries, 10)
    few, _ = AnnoyIndex.build(gallery, n_trees=1, search_k=10, seed=0).search(queries, 10)
    recall_many = recall_against_exact(many, exact)
    recall_few = recall_against_exact(few, exact)

    assert recall_many > 0.95
    assert recall_few < recall_many - 0.2
    assert np.all(np.diff(many_distances, axis=1) >= 0)  # nearest first


def test_annoy_distances_match_brute() -> None:
    """Annoy's euclidean and angular distances agree with exact search for the neighbours both find."""
    gallery, queries = _clustered(300, seed=16), _clustered(10, seed=17)
    for metric in ("euclidean", "angular"):
        exact_ids, exact_distances = BruteForceIndex.build(gallery, metric).search(queries, 5)
        ids, distances = AnnoyIndex.build(gallery, metric, n_trees=50, search_k=10_000).search(queries, 5)
        np.testing.assert_array_equal(ids, exact_ids)  # search_k covers the whole gallery: exact
        np.testing.assert_allclose(distances, exact_distances, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cls, bad", [(BruteForceIndex, "n_trees"), (AnnoyIndex, "n_trees2")])
def test_unknown_params_rejected(cls: type[NearestNeighbourIndex], bad: str) -> None:
    """A setting the family does not have is refused, naming it and the allowed settings."""
    with pytest.raises(UnknownSettingError) as caught:
        cls.build(_gaussian(10, seed=18), **{bad: 3})
    assert caught.value.setting == bad and caught.value.allowed == list(cls.defaults)
    assert all(name in str(caught.value) for name in cls.defaults)


def test_annoy_on_disk_build_gives_the_same_forest_and_saves_by_moving_the_file(tmp_path: Path) -> None:
    """``on_disk_build`` builds in a memory-mapped file (for collections larger than memory): the same seeded
    forest as in memory, moved (not copied) into the index folder on save, and no file left behind."""
    gallery, queries = _clustered(500, seed=1), _clustered(20, seed=2)
    in_memory = AnnoyIndex.build(gallery, n_trees=5, seed=3)
    on_disk = AnnoyIndex.build(gallery, n_trees=5, seed=3, on_disk_build=True)
    build_file = on_disk._build_file
    assert build_file is not None and build_file.stat().st_size > 0
    assert np.array_equal(in_memory.search(queries, 10)[0], on_disk.search(queries, 10)[0])
    on_disk.save(tmp_path / "annoy")
    assert not build_file.exists() and on_disk._build_file is None
    loaded = AnnoyIndex.load(tmp_path / "annoy", DIM, "euclidean", on_disk.params)
    assert np.array_equal(loaded.search(queries, 10)[0], in_memory.search(queries, 10)[0])
    assert np.array_equal(on_disk.search(queries, 10)[0], in_memory.search(queries, 10)[0])
    unsaved = AnnoyIndex.build(gallery, n_trees=2, on_disk_build=True)
    leftover = unsaved._build_file
    del unsaved
    assert leftover is not None and not leftover.exists()


@pytest.mark.parametrize(("family", "params"), [("brute", {}), ("hnsw", {}), ("annoy", {"n_trees": 5}),
                                                ("faiss", {"factory": "IVF8,Flat", "nprobe": 8}),
                                                ("kd_tree", {}), ("ball_tree", {})])
def test_every_family_takes_queries_in_any_float_layout(family: str, params: dict) -> None:
    """The lean search paths hand queries to the libraries as they come: 1-D, float64 and strided queries give
    the same answers as a contiguous float32 matrix."""
    gallery, queries = _clustered(300, seed=1), _clustered(6, seed=2)
    index = index_family(family).build(gallery, **params)
    expected_ids, expected_distances = index.search(queries, 5)
    strided = np.repeat(queries, 2, axis=1)[:, ::2]
    for variant in (queries.astype(np.float64), strided):
        ids, distances = index.search(variant, 5)
        assert np.array_equal(ids, expected_ids) and np.allclose(distances, expected_distances, rtol=1e-5)
    ids, distances = index.search(queries[0], 5)
    assert ids.shape == (1, 5) and np.array_equal(ids[0], expected_ids[0])
    assert ids.dtype == np.int64 and distances.dtype == np.float32


def test_faiss_pads_with_minus_one_and_infinity_when_the_lists_probed_hold_too_few() -> None:
    gallery = _clustered(200, seed=1)
    index = index_family("faiss").build(gallery, factory="IVF16,Flat", nprobe=1)
    ids, distances = index.search(gallery[:5], 150)
    assert (ids == -1).any(), "one probed list of 16 should hold fewer than 150 of 200 vectors"
    assert np.all(np.isinf(distances[ids == -1])) and np.all(np.isfinite(distances[ids >= 0]))
