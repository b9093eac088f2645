"""Every metric ris reports, declared once: key, title, unit and what it averages over.

The evaluation returns exactly these keys; the results tables, MLflow and the DVC metrics files take their names,
order and display formats from here, for whatever ``eval.k`` and ``eval.recall_ks`` are.
"""

from __future__ import annotations

from dataclasses import dataclass

from ris.config import EvalConfig


@dataclass(frozen=True)
class MetricSpec:
    """One reported number. ``unit`` picks the display: ratio (as %), count, dim, seconds, bytes (as MB), us, qps."""

    key: str
    title: str
    unit: str
    about: str


def protocol_metrics(cfg: EvalConfig) -> list[MetricSpec]:
    """The metrics each protocol reports, in display order."""
    specs = [MetricSpec(f"precision_at_{cfg.k}", f"mP@{cfg.k}", "ratio",
                        f"mean over queries of the share of same-class images among the first {cfg.k} results")]
    if cfg.k != 1:
        specs.append(MetricSpec("precision_at_1", "P@1", "ratio", "share of queries whose first result is same-class"))
    specs.append(MetricSpec("map_at_r", "MAP@R", "ratio",
                            "mean over queries (with at least one same-class gallery image) of average precision at "
                            "R, R = same-class gallery images (Musgrave et al. 2020)"))
    specs += [MetricSpec(f"recall_at_{k}", f"R@{k}", "ratio",
                         f"share of queries with at least one same-class image among the first {k} results")
              for k in sorted(set(cfg.recall_ks))]
    specs += [MetricSpec(f"ann_recall_at_{cfg.ann_recall_k}", f"recall@{cfg.ann_recall_k} vs exact", "ratio",
                         f"mean over queries of the share of exact search's top {cfg.ann_recall_k} this index returns"),
              MetricSpec("queries", "queries", "count", "query images"),
              MetricSpec("gallery_size", "gallery", "count", "images searched per query (before excluding itself)")]
    return specs


def cell_metrics() -> list[MetricSpec]:
    """The metrics of a grid cell itself (its reduced vectors and its index over the whole collection)."""
    return [MetricSpec("vector_dim", "dim", "dim", "length of the indexed vectors"),
            MetricSpec("explained_variance", "PCA var", "ratio", "variance the kept PCA components explain"),
            MetricSpec("index_build_seconds", "build s", "seconds", "time to build the index over the collection"),
            MetricSpec("index_bytes", "index MB", "bytes", "index files on disk"),
            MetricSpec("latency_p50_us", "p50 µs", "us", "median single-query latency, warm, one thread"),
            MetricSpec("latency_p95_us", "p95 µs", "us", "95th percentile single-query latency"),
            MetricSpec("latency_p99_us", "p99 µs", "us", "99th percentile single-query latency"),
            MetricSpec("qps", "QPS", "qps", "single-thread queries per second (1 / mean latency)")]


def rerank_metrics() -> list[MetricSpec]:
    """The metrics of a reranker on a grid cell (over the cell's index; its accuracy is per protocol)."""
    latency = [spec for spec in cell_metrics() if spec.unit in ("us", "qps")]
    return [*latency,
            MetricSpec("rerank_prepare_seconds", "rerank prep s", "seconds",
                       "one-off work over the gallery before the first query (k-reciprocal: its neighbour lists)"),
            MetricSpec("rerank_evaluate_seconds", "rerank eval s", "seconds",
                       "time to prepare, time and evaluate the reranker on the cell under every protocol")]


def format_value(spec: MetricSpec, value: float | None) -> str:
    """``value`` as people read it in a results table (blank when missing)."""
    if value is None or value != value:  # None or NaN: a metric the row does not have
        return ""
    if spec.unit == "ratio":
        return f"{100 * value:.2f} %"
    if spec.unit == "seconds":
        return f"{value:.2f}"
    if spec.unit == "bytes":
        return f"{value / 1e6:.1f}"
    return f"{value:,.0f}"
