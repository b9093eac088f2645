"""The Milvus family on synthetic vectors: Milvus Lite embedded (exact FLAT, IVF recall, persistence, damage) and the
same code against a Milvus server (Milvus Lite's own gRPC server stands in for one)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from naive_search import naive_search

from ris.artifacts import ArtifactError
from ris.config import IndexConfig
from ris.evaluate.metrics import recall_against_exact
from ris.index import BruteForceIndex, IndexStore, MilvusIndex
from ris.index.registry import UnknownSettingError

pytest.importorskip("milvus_lite")

DIM = 16


def _gaussian(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)


def _clustered(rows: int, seed: int, clusters: int = 20) -> np.ndarray:
    centres = np.random.default_rng(12345).normal(0.0, 10.0, size=(clusters, DIM))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, clusters, rows)] + rng.normal(0.0, 1.0, (rows, DIM))).astype(np.float32)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A Milvus server URI: Milvus Lite's gRPC server on a free local port, speaking the Milvus protocol."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    grpc_server, db, port = start_server_in_thread(str(tmp_path / "server-data"))
    yield f"http://127.0.0.1:{port}"
    grpc_server.stop(grace=None)
    db.close()


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_flat_is_exact(metric: str) -> None:
    """FLAT returns the numpy argsort of the full distance matrix, with real (not squared) distances."""
    gallery, queries = _gaussian(120, seed=1), _gaussian(30, seed=2)
    expected_ids, expected_distances = naive_search(gallery, queries, metric)
    assert np.diff(expected_distances[:, :11], axis=1).min() > 2e-5  # a unique order

    index = MilvusIndex.build(gallery, metric, index_type="FLAT")
    try:
        ids, distances = index.search(queries, 10)
        one_ids, _ = index.search(queries[7], 10)
    finally:
        index.close()
    assert ids.shape == distances.shape == (30, 10)
    assert ids.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(ids, expected_ids[:, :10])
    np.testing.assert_array_equal(one_ids[0], ids[7])
    np.testing.assert_allclose(distances, expected_distances[:, :10], rtol=1e-4, atol=1e-4)


def test_ivf_finds_most_exact_neighbours_and_nprobe_matters() -> None:
    """IVF_FLAT (the index is used, not a scan): most of exact search's top 10, all of it when every list is probed."""
    gallery, queries = _clustered(2000, seed=21), _clustered(100, seed=22)
    exact, _ = BruteForceIndex.build(gallery).search(queries, 10)
    index = MilvusIndex.build(gallery, index_type="IVF_FLAT", nlist=16, nprobe=4)
    try:
        found, distances = index.search(queries, 10)
        assert recall_against_exact(found, exact) >= 0.9
        true_distances = np.linalg.norm(gallery[found] - queries[:, None, :], axis=2)
        np.testing.assert_allclose(distances, true_distances, rtol=1e-3, atol=1e-3)

        index.set_search_params(nprobe=16)
        everything, _ = index.search(queries, 10)
        assert recall_against_exact(everything, exact) == 1.0
        index.set_search_params(nprobe=1)
        one_list, _ = index.search(queries, 10)
        assert recall_against_exact(one_list, exact) < 1.0  # one list of 16 misses some: the index is searched
    finally:
        index.close()


def test_incremental_add_continues_ids() -> None:
    gallery = _gaussian(50, seed=10)
    index = MilvusIndex(DIM, index_type="FLAT")
    try:
        index.add(gallery[:30])
        index.finalize()
        index.add(gallery[30:])
        index.finalize()
        assert len(index) == 50
        ids, distances = index.search(gallery[[3, 41, 49]], 1)
    finally:
        index.close()
    np.testing.assert_array_equal(ids[:, 0], [3, 41, 49])
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-3)


def test_k_larger_than_gallery_pads() -> None:
    gallery = _gaussian(5, seed=9)
    index = MilvusIndex.build(gallery, index_type="FLAT")
    try:
        ids, distances = index.search(gallery[:2], 8)
    finally:
        index.close()
    assert ids.shape == distances.shape == (2, 8)
    assert sorted(ids[0, :5]) == [0, 1, 2, 3, 4] and ids[1, 0] == 1
    assert np.all(ids[:, 5:] == -1) and np.all(np.isinf(distances[:, 5:]))
    assert np.all(np.isfinite(distances[:, :5]))


def test_unknown_setting_rejected() -> None:
    with pytest.raises(UnknownSettingError) as caught:
        MilvusIndex(DIM, nprobes=3)
    assert caught.value.setting == "nprobes" and caught.value.allowed == list(MilvusIndex.defaults)


@pytest.mark.parametrize("index_type", ["FLAT", "IVF_FLAT", "HNSW"])
def test_store_round_trip_from_a_moved_folder(tmp_path: Path, index_type: str) -> None:
    """Saved, moved and loaded (twice at once), the index answers as before; the saved folder is left unchanged."""
    gallery, queries = _clustered(300, seed=12), _clustered(20, seed=13)
    spec = IndexConfig("milvus", "angular", {"index_type": index_type, "nlist": 8, "nprobe": 2})
    store = IndexStore.build(gallery, spec, {"features_key": "abc"})
    before = store.index.search(queries, 7)
    store.save(tmp_path / "built")
    assert store.index.search(queries, 7)[0].tolist() == before[0].tolist()  # still usable after saving
    store.index.close()
    assert (tmp_path / "built" / "milvus.db").is_dir()
    shutil.move(tmp_path / "built", tmp_path / "moved")
    files = {path: path.read_bytes() for path in (tmp_path / "moved").rglob("*") if path.is_file()}

    first = IndexStore.load(tmp_path / "moved", expect={"features_key": "abc"})
    second = IndexStore.load(tmp_path / "moved")  # Milvus Lite locks its database: each load works on a copy
    try:
        assert type(first.index) is MilvusIndex and len(first.index) == 300 and first.index.metric == "angular"
        for loaded in (first, second):
            after = loaded.index.search(queries, 7)
            np.testing.assert_array_equal(after[0], before[0])
            np.testing.assert_allclose(after[1], before[1], rtol=1e-6)
    finally:
        first.index.close()
        second.index.close()
    assert files == {path: path.read_bytes() for path in (tmp_path / "moved").rglob("*") if path.is_file()}


@pytest.mark.parametrize("damage", ["truncate data", "truncate index", "drop data"])
def test_damaged_database_is_caught_on_load(tmp_path: Path, damage: str) -> None:
    """A damaged Milvus Lite database is an ArtifactError at load, never a silently smaller gallery."""
    store = IndexStore.build(_clustered(300, seed=2), IndexConfig("milvus", params={"nlist": 8}), {})
    store.save(tmp_path / "m")
    store.index.close()
    data = next((tmp_path / "m" / "milvus.db").rglob("*.parquet"))
    if damage == "drop data":
        data.unlink()
    else:
        target = data if damage == "truncate data" else next((tmp_path / "m" / "milvus.db").rglob("*.idx"))
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="dvc repro"):
        IndexStore.load(tmp_path / "m")


def test_server_uri_saves_a_reference_and_reconnects(tmp_path: Path, server: str) -> None:
    """Against a server the folder only names the collection; loading reconnects to it, and two indexes built on
    one server get collections of their own."""
    gallery, queries = _gaussian(200, seed=3), _gaussian(10, seed=4)
    spec = IndexConfig("milvus", params={"uri": server, "index_type": "FLAT"})
    store = IndexStore.build(gallery, spec, {})
    other = MilvusIndex.build(_gaussian(50, seed=5), uri=server, index_type="FLAT")
    before = store.index.search(queries, 5)
    store.save(tmp_path / "remote")
    store.index.close()

    saved = json.loads((tmp_path / "remote" / "milvus.json").read_text())
    assert saved["uri"] == server and saved["collection"].startswith("ris_")
    assert not (tmp_path / "remote" / "milvus.db").exists()
    loaded = IndexStore.load(tmp_path / "remote")
    try:
        assert len(loaded.index) == 200 and len(other) == 50
        after = loaded.index.search(queries, 5)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[0], naive_search(gallery, queries, "euclidean")[0][:, :5])
    finally:
        loaded.index.close()
        other.close()
