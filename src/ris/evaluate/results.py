"""The results table: one row per evaluated cell, for machines (CSV) and for people (Markdown)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

PERCENT = ("book_precision_at_4", "book_precision_at_1", "book_map_at_r", "recall_at_10_vs_exact")
MICROSECONDS = ("latency_p50_us", "latency_p95_us", "latency_p99_us", "qps")
TITLES = {  # metrics key -> column title, in display order
    "book_precision_at_4": "mP@4 (book)", "book_precision_at_1": "P@1", "book_map_at_r": "MAP@R",
    "recall_at_10_vs_exact": "recall@10 vs exact", "index_build_seconds": "build s",
    "latency_p50_us": "p50 µs", "latency_p95_us": "p95 µs", "latency_p99_us": "p99 µs", "qps": "QPS",
    "index_bytes": "index MB",
}


def results_table(metrics_files: Iterable[Path]) -> pd.DataFrame:
    """One row per metrics JSON written by the evaluate stage, in the order given."""
    rows = []
    for path in metrics_files:
        report = json.loads(path.read_text())
        rows.append({"backbone": report["backbone"], "dim": report["dim"], "index": report["index"],
                     "protocol": report["protocol"], **report["metrics"]})
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """The people-facing view: percentages for accuracy, microseconds for latency, MB for size."""
    shown = table[["backbone", "dim", "index", *[key for key in TITLES if key in table]]].copy()
    for key in PERCENT:
        if key in shown:
            shown[key] = (100 * shown[key]).map("{:.2f} %".format)
    for key in MICROSECONDS:
        if key in shown:
            shown[key] = shown[key].map("{:,.0f}".format)
    if "index_build_seconds" in shown:
        shown["index_build_seconds"] = shown["index_build_seconds"].map("{:.2f}".format)
    if "index_bytes" in shown:
        shown["index_bytes"] = (shown["index_bytes"] / 1e6).map("{:.1f}".format)
    return shown.rename(columns=TITLES).to_markdown(index=False) + "\n"
