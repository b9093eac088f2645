"""Warm single-query latency of an index, measured over many queries on a fixed number of threads."""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from ris.config import LatencyConfig
from ris.index.base import NearestNeighbourIndex


def measure_latency(index: NearestNeighbourIndex, queries: np.ndarray, cfg: LatencyConfig,
                    k: int) -> dict[str, float]:
    """Time one ``search(query, k)`` call per query after a warm-up; report percentiles in microseconds and QPS.

    Queries are a seeded sample of ``queries`` (with replacement when fewer rows than ``cfg.queries``).
    """
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(len(queries), size=cfg.queries, replace=cfg.queries > len(queries))
    sample = np.ascontiguousarray(queries[chosen], dtype=np.float32)
    timings_ns = np.empty(len(sample), dtype=np.int64)
    with threadpool_limits(limits=cfg.threads):
        for query in sample[: cfg.warmup]:
            index.search(query[None, :], k)
        for position, query in enumerate(sample):
            started = time.perf_counter_ns()
            index.search(query[None, :], k)
            timings_ns[position] = time.perf_counter_ns() - started
    micros = timings_ns / 1e3
    return {"latency_p50_us": float(np.percentile(micros, 50)), "latency_p95_us": float(np.percentile(micros, 95)),
            "latency_p99_us": float(np.percentile(micros, 99)), "qps": float(1e6 / micros.mean())}
