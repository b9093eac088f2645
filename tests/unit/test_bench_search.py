"""`ris bench search` on tiny collections: the collection it makes, the sweep, the frontier and the targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ris.artifacts import ArtifactError
from ris.bench.collections import (
    BenchCollection,
    cached_collection,
    exact_neighbours,
    held_out_collection,
    median_nearest_distance,
    synthetic_collection,
)
from ris.bench.report import check_targets, plot_recall_qps
from ris.bench.search import Candidate, measure_candidate, operating_points, pareto_frontier, run_benchmark


def _seeds(rows: int = 300, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Vectors with a decaying spectrum, like PCA output, and their per-component variances."""
    variances = np.linspace(4.0, 0.1, dim)
    vectors = np.random.default_rng(0).normal(size=(rows, dim)) * np.sqrt(variances)
    return vectors.astype(np.float32), variances


def test_synthetic_collection_is_seeded_with_noise_scaled_to_the_nearest_neighbour_distance() -> None:
    seeds, variances = _seeds()
    made = synthetic_collection(seeds, variances, 5000, 50, seed=3, spec={"kind": "test"})
    again = synthetic_collection(seeds, variances, 5000, 50, seed=3, spec={"kind": "test"})
    assert made.gallery.shape == (5000, 16) and made.queries.shape == (50, 16) and made.truth.shape == (50, 100)
    assert np.array_equal(made.gallery, again.gallery) and np.array_equal(made.queries, again.queries)
    assert made.derived["noise_norm"] == pytest.approx(1.5 * median_nearest_distance(seeds))
    # Every gallery row is a seed plus noise: its distance to the nearest seed is about the noise norm or less.
    nearest_seed = np.sqrt(np.maximum(
        ((made.gallery[:200, None, :] - seeds[None, :, :]) ** 2).sum(axis=2).min(axis=1), 0))
    assert np.median(nearest_seed) < 1.2 * made.derived["noise_norm"]
    assert np.array_equal(made.truth[:, :10], exact_neighbours(made.gallery, made.queries, 10))


def test_held_out_collection_keeps_queries_out_of_the_gallery() -> None:
    vectors, _ = _seeds(500)
    made = held_out_collection(vectors, 100, seed=0, spec={})
    assert len(made.gallery) == 400 and len(made.queries) == 100
    as_rows = {row.tobytes() for row in made.gallery}
    assert not any(row.tobytes() in as_rows for row in made.queries)


def test_cached_collection_is_reused_and_remade_for_another_spec(tmp_path: Path) -> None:
    seeds, variances = _seeds()
    calls = []

    def make(seed: int) -> BenchCollection:
        calls.append(seed)
        return synthetic_collection(seeds, variances, 1000, 10, seed=seed, spec={})

    first = cached_collection(tmp_path / "c", {"seed": 1}, lambda: make(1))
    second = cached_collection(tmp_path / "c", {"seed": 1}, lambda: make(1))
    assert calls == [1] and np.array_equal(first.gallery, second.gallery)
    cached_collection(tmp_path / "c", {"seed": 2}, lambda: make(2))
    assert calls == [1, 2]
    with pytest.raises(ArtifactError, match="was made from"):
        BenchCollection.load(tmp_path / "c", {"seed": 1})


def test_pareto_frontier_and_operating_points() -> None:
    points = [{"recall": 0.8, "qps": 900.0}, {"recall": 0.9, "qps": 500.0}, {"recall": 0.85, "qps": 400.0},
              {"recall": 0.99, "qps": 100.0}, {"recall": 0.95, "qps": 80.0}]
    assert [(p["recall"], p["qps"]) for p in pareto_frontier(points)] == [(0.8, 900.0), (0.9, 500.0),
                                                                          (0.99, 100.0)]
    measured = [{"group": "g", "label": "a", "build_seconds": 1.0, "index_bytes": 10, "peak_rss_mb": 1.0,
                 "points": points[:3]},
                {"group": "g", "label": "b", "build_seconds": 2.0, "index_bytes": 20, "peak_rss_mb": 2.0,
                 "points": points[3:]}]
    table = operating_points(measured)["g"]
    assert table["0.90"]["qps"] == 500.0 and table["0.90"]["label"] == "a"
    assert table["0.95"]["qps"] == 100.0 and table["0.95"]["label"] == "b"
    assert table["0.99"]["recall"] == 0.99


def _saved_collection(tmp_path: Path) -> Path:
    seeds, variances = _seeds()
    synthetic_collection(seeds, variances, 3000, 40, seed=0, spec={}).save(tmp_path / "bench")
    return tmp_path / "bench"


def test_measure_candidate_sweeps_the_ladder_and_times_the_raw_call(tmp_path: Path) -> None:
    folder = _saved_collection(tmp_path)
    result = measure_candidate(folder, Candidate("hnswlib", "M 4", "hnsw", {"M": 4, "ef_construction": 20}),
                               k=10, build_threads=1, warmup=2, stop_recall=0.999, max_p50_us=1e6)
    recalls = [point["recall"] for point in result["points"]]
    assert len(recalls) > 1 and all(0.0 <= recall <= 1.0 for recall in recalls)
    assert recalls[-1] >= 0.999 or result["points"][-1]["settings"] == {"ef": 1024}
    assert [point["settings"]["ef"] for point in result["points"]] == sorted(
        point["settings"]["ef"] for point in result["points"])
    assert result["wrapper"]["raw_p50_us"] > 0 and result["wrapper"]["ratio"] > 0
    assert result["pipeline_operating_point"]["tuning_recall"] >= 0.95
    assert result["index_bytes"] > 0 and result["peak_rss_mb"] >= result["data_rss_mb"]


def test_run_benchmark_writes_what_the_targets_are_checked_on(tmp_path: Path) -> None:
    """Exact search only (one fresh process): its points, its baselines, the checks and the plot."""
    folder = _saved_collection(tmp_path)
    result = run_benchmark(folder, "caltech", only=["brute"], warmup=2, progress=lambda line: None)
    (exact,) = result["candidates"]
    assert exact["points"][0]["recall"] == 1.0 and exact["exact_baselines"]["numpy_p50_us"] > 0
    checks = check_targets(result)
    assert [check["target"] for check in checks] == [
        "p50 <= 15 us at recall@10 >= 0.95", "exact search within 1.2x of the fastest minimal exact search"]
    assert checks[0]["measured"] == float("inf") and not checks[0]["holds"]  # no approximate index measured
    assert plot_recall_qps(result, tmp_path / "plot.png").stat().st_size > 0
