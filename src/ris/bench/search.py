"""`ris bench search`: every index family, swept over its build and query settings, at one scale.

For each candidate (a family with build settings) a fresh process loads the collection, builds the index on
``build_threads`` threads (timed, peak memory, size on disk), then walks the family's search ladder, timing single
queries on one thread: recall@k against exact search, p50/p95/p99 latency and QPS per setting. Per family group the
report gives the Pareto frontier (recall against QPS, as ann-benchmarks plots it), the fastest setting at each
target recall, the setting the pipeline's operating point picks by itself (``target_recall`` 0.95) with the recall
it really gets, and ris's wrapper timed beside a minimal call of the library on the same index and queries.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from ris.bench.collections import BenchCollection
from ris.config import OperatingPointConfig
from ris.index import index_family
from ris.index.base import NearestNeighbourIndex
from ris.index.tuning import build_at_operating_point, recall_at_k

TARGET_RECALLS = (0.90, 0.95, 0.99)
PIPELINE_TARGET = 0.95  # the catalogue's operating point (conf/index/*.yaml)


@dataclass(frozen=True)
class Candidate:
    """One index to build: ``group`` names the curve it belongs to (one family can give several groups)."""

    group: str
    label: str
    family: str
    params: dict[str, Any] = field(default_factory=dict)


def candidates(scale: str, build_threads: int) -> list[Candidate]:
    """The build settings swept at ``scale`` (``caltech``: wide grids; ``million``: what a 2-core machine can
    build in a few minutes each)."""
    threads = {"build_threads": build_threads}
    if scale == "caltech":
        annoy_trees, hnsw_links, ivf_lists, efc = (10, 25, 50, 100, 200), (4, 8, 16, 32), (32, 64, 128, 256), 200
        extra = [Candidate("faiss-ivfsq", "IVF128,SQ8", "faiss", {"factory": "IVF128,SQ8"})]
    else:
        annoy_trees, hnsw_links, ivf_lists, efc = (50,), (16, 32), (1024, 4096), 100
        extra = [Candidate("faiss-ivfsq", "IVF4096,SQ8", "faiss", {"factory": "IVF4096,SQ8"}),
                 Candidate("faiss-ivfpq", "IVF4096,PQ32", "faiss", {"factory": "IVF4096,PQ32"})]
    return [Candidate("brute", "exact", "brute"),
            *[Candidate("annoy", f"{trees} trees", "annoy", {"n_trees": trees, **threads}) for trees in annoy_trees],
            *[Candidate("hnswlib", f"M {links}", "hnsw", {"M": links, "ef_construction": efc, **threads})
              for links in hnsw_links],
            Candidate("faiss-hnsw", "HNSW32", "faiss", {"factory": "HNSW32"}),
            *[Candidate("faiss-ivf", f"IVF{lists},Flat", "faiss", {"factory": f"IVF{lists},Flat"})
              for lists in ivf_lists],
            *extra]


# The minimal library call on the very index ris built: what the wrapper's overhead is measured against.
RAW_CALLS: dict[str, Callable[[Any, np.ndarray, int], Any]] = {
    "brute": lambda index, query, k: faiss.knn(query, index._vectors, k),
    "hnsw": lambda index, query, k: index._graph.knn_query(query, k=k),
    # A list, as ris passes it: Annoy reads a list faster than a numpy row, so this is the stricter comparison.
    "annoy": lambda index, query, k: index._annoy.get_nns_by_vector(
        query[0].tolist(), k, int(index.params["search_k_factor"] * index.params["n_trees"] * k),
        include_distances=True),
    "faiss": lambda index, query, k: index._index.search(query, k),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def time_queries(search: Callable[[np.ndarray], Any], queries: np.ndarray, warmup: int) -> tuple[np.ndarray, list]:
    """Microseconds of each single-query call (after ``warmup`` untimed calls), and what each returned."""
    for query in queries[:warmup]:
        search(query[None, :])
    micros = np.empty(len(queries))
    results = []
    for row, query in enumerate(queries):
        single = query[None, :]
        started = time.perf_counter_ns()
        result = search(single)
        micros[row] = (time.perf_counter_ns() - started) / 1e3
        results.append(result)
    return micros, results


def latency_summary(micros: np.ndarray) -> dict[str, float]:
    return {"p50_us": float(np.percentile(micros, 50)), "p95_us": float(np.percentile(micros, 95)),
            "p99_us": float(np.percentile(micros, 99)), "qps": float(1e6 / micros.mean())}


def measure_setting(index: NearestNeighbourIndex, queries: np.ndarray, truth: np.ndarray, k: int,
                    warmup: int) -> dict[str, float]:
    """Recall@k and single-query latency of ``index`` at its current setting."""
    micros, results = time_queries(lambda query: index.search(query, k), queries, warmup)
    found = np.concatenate([ids for ids, _ in results])
    return {"recall": recall_at_k(found, truth[:, :k]), **latency_summary(micros)}


def compare_raw(index: NearestNeighbourIndex, queries: np.ndarray, k: int, warmup: int,
                rounds: int = 3) -> dict[str, float]:
    """p50 of ris's ``search`` and of the minimal library call, alternated ``rounds`` times on the same queries
    (the median round of each); ``ratio`` is wrapper / raw."""
    raw_call = RAW_CALLS[index.name]
    wrapper, raw = [], []
    for _ in range(rounds):
        raw.append(np.percentile(time_queries(lambda query: raw_call(index, query, k), queries, warmup)[0], 50))
        wrapper.append(np.percentile(time_queries(lambda query: index.search(query, k), queries, warmup)[0], 50))
    raw_p50, wrapper_p50 = float(np.median(raw)), float(np.median(wrapper))
    return {"raw_p50_us": raw_p50, "wrapper_p50_us": wrapper_p50, "ratio": wrapper_p50 / raw_p50}


def exact_baselines(gallery: np.ndarray, queries: np.ndarray, k: int, warmup: int) -> dict[str, float]:
    """p50 of two minimal exact searches on the same vectors: numpy (one matrix-vector product and a partial
    sort) and faiss's flat index."""
    norms = (gallery.astype(np.float32) ** 2).sum(axis=1)

    def numpy_search(query: np.ndarray) -> np.ndarray:
        squared = norms - 2.0 * (gallery @ query[0])
        nearest = np.argpartition(squared, k)[:k]
        return nearest[np.argsort(squared[nearest])]

    flat = faiss.IndexFlatL2(gallery.shape[1])
    flat.add(np.ascontiguousarray(gallery, dtype=np.float32))
    return {"numpy_p50_us": float(np.percentile(time_queries(numpy_search, queries, warmup)[0], 50)),
            "faiss_flat_p50_us": float(np.percentile(time_queries(lambda q: flat.search(q, k), queries, warmup)[0],
                                                     50))}


def measure_candidate(folder: Path, candidate: Candidate, k: int, build_threads: int, warmup: int,
                      stop_recall: float, max_p50_us: float) -> dict[str, Any]:
    """Build ``candidate`` over the collection in ``folder`` and sweep its search ladder (run in a fresh process,
    so that the peak memory is this index's)."""
    collection = BenchCollection.load(folder)
    gallery = np.ascontiguousarray(collection.gallery)  # still memory-mapped: the build reads it in
    queries = np.ascontiguousarray(collection.queries)
    truth = np.asarray(collection.truth)
    data_mb = peak_rss_mb()  # the process before the build; its peak adds the index and the gallery's pages
    faiss.omp_set_num_threads(build_threads)
    # Built as the pipeline builds it, tuned to the catalogue's operating point on the way (not timed).
    index = index_family(candidate.family)(gallery.shape[1], **candidate.params)
    build_seconds, tuning = build_at_operating_point(
        index, gallery, OperatingPointConfig(target_recall=PIPELINE_TARGET, k=k))
    build_peak_mb = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="ris-bench-") as scratch:
        index.save(Path(scratch))
        index_bytes = sum(path.stat().st_size for path in Path(scratch).rglob("*") if path.is_file())
    faiss.omp_set_num_threads(1)
    points: list[dict[str, Any]] = []
    with threadpool_limits(limits=1):
        for settings in index.search_ladder(k) or [{}]:
            index.set_search_params(**settings)
            points.append({"settings": settings, **measure_setting(index, queries, truth, k, warmup)})
            if points[-1]["recall"] >= stop_recall or points[-1]["p50_us"] > max_p50_us:
                break
        # What the pipeline's own operating point picked, and the recall it gets on these (unseen) queries.
        tuned = None
        if tuning is not None:
            index.set_search_params(**tuning.chosen)
            tuned = {"settings": tuning.chosen, "tuning_recall": tuning.recall, "queries_from": tuning.queries_from,
                     "tuning_seconds": tuning.seconds, **measure_setting(index, queries, truth, k, warmup)}
        # The wrapper against the raw call, at the fastest setting that reaches the pipeline's target.
        reaching = [point for point in points if point["recall"] >= PIPELINE_TARGET] or points[-1:]
        fastest = max(reaching, key=lambda point: point["qps"])
        index.set_search_params(**fastest["settings"])
        # Every query, 5 rounds, where a search is quick (a ratio of ~10 us calls needs many to be stable); 200 a
        # round where it is slow (exact search at 1M), which is plenty there.
        sample = queries if fastest["p50_us"] < 1000 else queries[:200]
        wrapper = {"settings": dict(fastest["settings"]), "queries": len(sample),
                   **compare_raw(index, sample, k, warmup, rounds=5)}
        baselines = exact_baselines(gallery, queries[:200], k, warmup) if candidate.family == "brute" else None
    return {**asdict(candidate), "build_seconds": build_seconds, "index_bytes": index_bytes,
            "data_rss_mb": data_mb, "peak_rss_mb": max(build_peak_mb, peak_rss_mb()), "points": points,
            "pipeline_operating_point": tuned, "wrapper": wrapper, "exact_baselines": baselines}


def pareto_frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both recall and QPS, by increasing recall."""
    frontier: list[dict[str, Any]] = []
    for point in sorted(points, key=lambda point: (-point["recall"], -point["qps"])):
        if not frontier or point["qps"] > frontier[-1]["qps"]:
            frontier.append(point)
    return frontier[::-1]


def operating_points(measured: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group and target recall: the fastest measured setting (any build) that reaches it, or None."""
    table: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(result["group"] for result in measured):
        points = [{**point, "label": result["label"], "build_seconds": result["build_seconds"],
                   "index_bytes": result["index_bytes"], "peak_rss_mb": result["peak_rss_mb"]}
                  for result in measured if result["group"] == group for point in result["points"]]
        table[group] = {f"{target:.2f}": max((point for point in points if point["recall"] >= target),
                                             key=lambda point: point["qps"], default=None)
                        for target in TARGET_RECALLS}
    return table


def run_benchmark(folder: Path, scale: str, *, k: int = 10, build_threads: int = 2, warmup: int = 20,
                  stop_recall: float = 0.999, max_p50_us: float = 20_000.0,
                  only: list[str] | None = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every candidate of ``scale`` (or the groups in ``only``) on the collection saved in ``folder``."""
    collection = BenchCollection.load(folder)
    chosen = [candidate for candidate in candidates(scale, build_threads) if only is None or candidate.group in only]
    measured = []
    context = multiprocessing.get_context("spawn")
    for candidate in chosen:
        progress(f"{candidate.group} {candidate.label}: building over {collection.gallery.shape} ...")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            result = pool.submit(measure_candidate, folder, candidate, k, build_threads, warmup, stop_recall,
                                 max_p50_us).result()
        best = max(result["points"], key=lambda point: point["recall"])
        progress(f"  built in {result['build_seconds']:.1f} s, {result['index_bytes'] / 1e6:.1f} MB; best recall "
                 f"{best['recall']:.3f} at p50 {best['p50_us']:.0f} us; wrapper/raw {result['wrapper']['ratio']:.2f}")
        measured.append(result)
    return {"scale": scale, "k": k, "build_threads": build_threads, "search_threads": 1,
            "gallery": list(collection.gallery.shape), "queries": len(collection.queries),
            "collection": collection.spec, "collection_derived": collection.derived,
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": multiprocessing.cpu_count(),
                        "python": platform.python_version(), "faiss": faiss.__version__},
            "candidates": measured, "operating_points": operating_points(measured),
            "frontiers": {group: pareto_frontier([point for result in measured if result["group"] == group
                                                  for point in result["points"]])
                          for group in dict.fromkeys(result["group"] for result in measured)}}
