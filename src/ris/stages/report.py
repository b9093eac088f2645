"""DVC stage `report`: gather every evaluated cell into one results table (CSV and Markdown)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ris.config import Config
from ris.paths import PipelinePaths
from ris.stages._common import load_stage_config, parse_stage_args

COLUMNS = {  # metrics key -> column title, in display order
    "book_precision_at_4": "mP@4 (book)", "book_precision_at_1": "P@1", "book_map_at_r": "MAP@R",
    "recall_at_10_vs_exact": "recall@10 vs exact", "index_build_seconds": "build s",
    "latency_p50_us": "p50 µs", "latency_p95_us": "p95 µs", "latency_p99_us": "p99 µs", "qps": "QPS",
    "index_bytes": "index MB",
}


def results_table(metrics_dir: Path) -> pd.DataFrame:
    """One row per metrics JSON under ``metrics_dir`` (every backbone ever evaluated), best accuracy first."""
    rows = []
    for path in sorted(metrics_dir.rglob("*.json")):
        report = json.loads(path.read_text())
        rows.append({"backbone": report["backbone"], "dim": report["dim"], "index": report["index"],
                     "protocol": report["protocol"], **report["metrics"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["backbone", "dim", "index"], key=lambda column: column.astype(str)).reset_index(
        drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """The people-facing view: percentages for accuracy, microseconds for latency, MB for size."""
    shown = table[["backbone", "dim", "index", *[key for key in COLUMNS if key in table]]].copy()
    for key in ("book_precision_at_4", "book_precision_at_1", "book_map_at_r", "recall_at_10_vs_exact"):
        if key in shown:
            shown[key] = (100 * shown[key]).map("{:.2f} %".format)
    for key in ("latency_p50_us", "latency_p95_us", "latency_p99_us", "qps"):
        if key in shown:
            shown[key] = shown[key].map("{:,.0f}".format)
    if "index_build_seconds" in shown:
        shown["index_build_seconds"] = shown["index_build_seconds"].map("{:.2f}".format)
    if "index_bytes" in shown:
        shown["index_bytes"] = (shown["index_bytes"] / 1e6).map("{:.1f}".format)
    return shown.rename(columns=COLUMNS).to_markdown(index=False) + "\n"


def run(cfg: Config) -> pd.DataFrame:
    paths = PipelinePaths(cfg)
    table = results_table(paths.reports_dir / "metrics")
    for name, text in (("results.csv", table.to_csv(index=False)), ("results.md", to_markdown(table))):
        partial = paths.reports_dir / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, paths.reports_dir / name)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    run(load_stage_config(parse_stage_args("report", argv)))


if __name__ == "__main__":
    main()
