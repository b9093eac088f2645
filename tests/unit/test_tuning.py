"""Operating points: query-time settings, the search ladders, and tuning an index to a target recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ris.config import ConfigError, IndexConfig, OperatingPointConfig, load_config
from ris.index import IndexStore, index_family
from ris.index.registry import UnknownSettingError
from ris.index.tuning import HELD_OUT, MEMBERS, leave_self_out, recall_at_k, tune_to_recall

APPROXIMATE = {"hnsw": {"M": 4, "ef_construction": 20}, "annoy": {"n_trees": 4},
               "faiss": {"factory": "IVF32,Flat", "nprobe": 1}}


def _hard(rows: int = 3000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Unstructured Gaussian vectors: the hardest case for approximate search (no clusters to exploit)."""
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def test_leave_self_out_removes_own_id_or_the_last() -> None:
    ids = np.array([[7, 3, 5], [1, 2, 4]])
    assert leave_self_out(ids, np.array([3, 9])).tolist() == [[7, 5], [1, 2]]


def test_recall_at_k_counts_shared_neighbours_and_ignores_pads() -> None:
    exact = np.array([[1, 2], [3, -1]])
    assert recall_at_k(np.array([[2, 9], [3, 4]]), exact) == pytest.approx(2 / 3)


@pytest.mark.parametrize("family", sorted(APPROXIMATE))
def test_tuning_picks_the_first_setting_that_reaches_the_target(family: str) -> None:
    """The chosen setting reaches the target, every earlier (faster) one in the ladder stays below it, and the
    index is left at the chosen setting."""
    vectors = _hard()
    index = index_family(family).build(vectors, **APPROXIMATE[family])
    tuning = tune_to_recall(index, vectors, OperatingPointConfig(target_recall=0.9, queries=200))
    assert tuning is not None and tuning.met and tuning.recall >= 0.9
    assert all(step["recall"] < 0.9 for step in tuning.tried[:-1])
    assert len(tuning.tried) > 1, "the fastest setting should not already reach 0.9 on unstructured data"
    assert {name: index.params[name] for name in tuning.chosen} == tuning.chosen
    assert index.search_ladder(10)[len(tuning.tried) - 1] == tuning.chosen


def test_unreachable_target_keeps_the_most_exact_setting_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _hard()
    index = index_family("hnsw").build(vectors, M=4, ef_construction=10)
    monkeypatch.setattr(index, "search_ladder", lambda k: [{"ef": 10}, {"ef": 12}])
    tuning = tune_to_recall(index, vectors, OperatingPointConfig(target_recall=1.0, queries=100))
    assert tuning is not None and not tuning.met and tuning.recall < 1.0
    assert tuning.chosen == {"ef": 12} and index.params["ef"] == 12


def test_exact_families_and_untargeted_points_are_not_tuned() -> None:
    vectors = _hard(200)
    assert tune_to_recall(index_family("brute").build(vectors), vectors, OperatingPointConfig(0.95)) is None
    hnsw = index_family("hnsw").build(vectors, ef=77)
    assert tune_to_recall(hnsw, vectors, OperatingPointConfig(None)) is None and hnsw.params["ef"] == 77


def test_only_query_time_settings_change_after_building() -> None:
    index = index_family("hnsw").build(_hard(100))
    with pytest.raises(UnknownSettingError, match="'M' is not a setting of 'hnsw'; allowed: ef"):
        index.set_search_params(M=32)


def test_tuned_store_reloads_at_its_operating_point(tmp_path: Path) -> None:
    """The chosen setting and the tuning record are saved with the index, so a search after loading answers at
    the same recall."""
    vectors = _hard()
    spec = IndexConfig("hnsw", params={"M": 4, "ef_construction": 20},
                       operating_point=OperatingPointConfig(target_recall=0.9, queries=200))
    store = IndexStore.build(vectors, spec, {})
    store.save(tmp_path / "hnsw")
    loaded = IndexStore.load(tmp_path / "hnsw")
    assert loaded.tuning == store.tuning and loaded.tuning is not None
    assert loaded.index.params["ef"] == store.tuning["chosen"]["ef"]
    queries = vectors[:50]
    assert np.array_equal(loaded.index.search(queries, 10)[0], store.index.search(queries, 10)[0])


@pytest.mark.parametrize(("value", "message"), [(1.5, "at most 1"), (0.0, "above 0")])
def test_target_recall_is_checked(value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=f"indexes.h.operating_point.target_recall' is {value}.*{message}"):
        load_config({"data": {"url": "x"}, "indexes": {"h": {"family": "hnsw",
                                                              "operating_point": {"target_recall": value}}},
                     "grid": {"indexes": ["h"]}, "search": {"index": "h"}})


@pytest.mark.parametrize(("family", "params", "queries_from"), [
    ("hnsw", {"M": 16, "ef_construction": 100}, HELD_OUT),
    ("faiss", {"factory": "IVF32,Flat"}, HELD_OUT),
    ("faiss", {"factory": "HNSW8"}, MEMBERS),
    ("annoy", {"n_trees": 4}, MEMBERS)])
def test_store_tunes_on_held_out_rows_where_the_family_can_add_them_later(family: str, params: dict,
                                                                           queries_from: str) -> None:
    """Held-out rows are tuned on as outside queries, then added under their own ids: every row is found as
    itself, at its own row number, whatever order the rows went in."""
    vectors = _hard(2000)
    spec = IndexConfig(family, params=params, operating_point=OperatingPointConfig(target_recall=0.9, queries=150))
    store = IndexStore.build(vectors, spec, {})
    assert store.tuning is not None and store.tuning["queries_from"] == queries_from
    assert store.tuning["queries"] == 150 and store.tuning["met"]
    assert len(store.index) == len(vectors)
    store.index.set_search_params(**store.index.search_ladder(10)[-1])  # the most exact setting
    ids, distances = store.index.search(vectors, 1)
    assert (ids[:, 0] == np.arange(len(vectors))).mean() > 0.99 and np.median(distances) < 1e-3


def test_annoy_tunes_a_budget_per_result_so_deep_queries_are_not_starved() -> None:
    """Tuned at k = 10, Annoy keeps its budget per result: asked for 200 (as MAP@R asks), it inspects 20 times the
    nodes and keeps its recall, where the same fixed search_k would find far fewer of the true 200."""
    vectors = _hard(3000)
    index = index_family("annoy").build(vectors, n_trees=10)
    tuning = tune_to_recall(index, vectors, OperatingPointConfig(target_recall=0.9, queries=100))
    assert tuning is not None and tuning.met and tuning.chosen["search_k"] == -1
    queries, exact = vectors[:50], index_family("brute").build(vectors).search(vectors[:50], 200)[0]
    deep = recall_at_k(index.search(queries, 200)[0], exact)
    fixed = int(tuning.chosen["search_k_factor"] * 10 * 10)
    index.set_search_params(search_k=fixed)
    starved = recall_at_k(index.search(queries, 200)[0], exact)
    assert deep >= 0.85 and starved < deep - 0.2
