"""The results table: one row per evaluated cell and protocol, for machines (CSV) and for people (Markdown).

Columns, their titles and formats come from :mod:`ris.evaluate.declarations`, so any ``eval.k`` shows up. A cell
with re-ranking measured (``eval.rerank``) has one more row per reranker and protocol, after its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ris.artifacts import ArtifactError
from ris.config import AUTO_DIM, NO_RERANK, EvalConfig
from ris.evaluate.declarations import cell_metrics, format_value, protocol_metrics, rerank_metrics
from ris.evaluate.protocols import PROTOCOLS

KEYS = ["backbone", "dim", "index", "family", "rerank", "protocol"]
RERANK_SETTINGS = "rerank_settings"
"""The column that names each reranker's method and settings (empty for rows without re-ranking)."""


def results_table(metrics_files: Iterable[Path], cfg: EvalConfig) -> pd.DataFrame:
    """One row per (cell, protocol) of the metrics files written by the evaluate stage, in the order given, each
    followed by one row per reranker measured on the cell (its latency in place of the index's)."""
    columns = list(dict.fromkeys(spec.key for spec in [*protocol_metrics(cfg), *cell_metrics(), *rerank_metrics()]))
    rows = []
    for path in metrics_files:
        if not path.is_file():
            raise ArtifactError(f"{path} not found: run `dvc repro` (the evaluate stage of that cell writes it)")
        report = json.loads(path.read_text())
        for protocol in cfg.protocols:
            metrics = {**report["protocols"][protocol], **report["cell"]}
            keys = {"backbone": report["backbone"], "dim": report["dim"], "index": report["index"],
                    "family": report["family"], "protocol": protocol}
            rows.append({**keys, "rerank": NO_RERANK, **{key: metrics.get(key) for key in columns},
                         RERANK_SETTINGS: ""})
            for name, reranked in report.get("rerank", {}).items():
                if protocol in reranked["protocols"]:
                    metrics = {**report["cell"], **reranked["cell"], **reranked["protocols"][protocol]}
                    rows.append({**keys, "rerank": name, **{key: metrics.get(key) for key in columns},
                                 RERANK_SETTINGS: reranked["about"]})
    return pd.DataFrame(rows, columns=[*KEYS, *columns, RERANK_SETTINGS])


def to_markdown(table: pd.DataFrame, cfg: EvalConfig) -> str:
    """The people-facing view: one table per protocol, titled and formatted as declared; a reranked row names its
    index ``index + reranker``, and a note under the table gives each reranker's settings."""
    shown_specs = [spec for spec in [*protocol_metrics(cfg), *cell_metrics()]
                   if spec.key not in ("queries", "gallery_size", "vector_dim")]
    sections = []
    for protocol in cfg.protocols:
        part = table[table["protocol"] == protocol]
        if part.empty:
            continue
        first = part.iloc[0]
        heading = (f"### Protocol `{protocol}`: {PROTOCOLS[protocol].about} "
                   f"({int(first['queries']):,} queries, gallery of {int(first['gallery_size']):,})")
        shown = part[["backbone", "dim", "index"]].copy()
        shown["index"] = [index if rerank == NO_RERANK else f"{index} + {rerank}"
                          for index, rerank in zip(part["index"], part["rerank"], strict=True)]
        # "auto" (the PCA sweep's choice) shows the dimension it stood for.
        shown["dim"] = [f"{label} ({int(width)})" if label == AUTO_DIM else label
                        for label, width in zip(part["dim"], part["vector_dim"], strict=True)]
        for spec in shown_specs:
            shown[spec.title] = [format_value(spec, value) for value in part[spec.key]]
        sections.append(f"{heading}\n\n{shown.to_markdown(index=False)}\n{_rerank_note(part)}")
    return "\n".join(sections)


def _rerank_note(part: pd.DataFrame) -> str:
    """What the reranked rows of a table are (empty when it has none)."""
    reranked = part[part["rerank"] != NO_RERANK]
    if reranked.empty:
        return ""
    settings = dict.fromkeys(zip(reranked["rerank"], reranked[RERANK_SETTINGS], strict=True))
    named = "; ".join(f"`{name}`: {about}" for name, about in settings)
    return (f"\nRows `index + reranker` re-rank that index's results ({named}); their latency includes every index "
            "search the reranker makes.\n")


def headline_summary(metrics_file: Path) -> dict:
    """The few numbers that say how one cell did, at keys that do not depend on the backbone or the grid (so
    `dvc exp show` and `dvc metrics diff` line any two experiments up): per protocol its retrieval metrics, and the
    cell's dimension, latency and throughput."""
    report = json.loads(metrics_file.read_text())
    cell = report["cell"]
    summary = {"backbone": report["backbone"], "dim": report["dim"], "index": report["index"],
               "vector_dim": cell["vector_dim"], "latency_p50_us": cell["latency_p50_us"], "qps": cell["qps"]}
    for protocol, metrics in report["protocols"].items():
        summary[protocol] = {key: value for key, value in metrics.items() if key not in ("queries", "gallery_size")}
    return summary


def stale_metric_files(metrics_root: Path, current: Iterable[Path]) -> list[Path]:
    """The metric files under ``metrics_root`` that are not ``current`` (cells that left the grid), sorted."""
    keep = {path.resolve() for path in current}
    return sorted(path for path in metrics_root.rglob("*.json") if path.resolve() not in keep)


RECALL_QPS_PROTOCOL = "heldout"
"""The protocol whose queries the recall-QPS figure uses: outside images, as a served search meets them."""


def recall_qps_figure(table: pd.DataFrame, out: Path) -> int:
    """Draw recall@k against exact search (x) and queries per second (y, log) of every grid cell without a
    re-ranker, one colour per index and one marker per dimension, one panel per backbone; return how many points.

    Each cell is one point at its tuned operating point (``index.*.operating_point``); `ris bench search` walks whole
    curves. Exact families sit at recall 1.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    cells = table[(table["protocol"] == RECALL_QPS_PROTOCOL) & (table["rerank"] == NO_RERANK)]
    cells = cells.dropna(subset=["ann_recall_at_10", "qps"])
    backbones = list(dict.fromkeys(cells["backbone"]))
    figure, axes = plt.subplots(1, max(len(backbones), 1), figsize=(6.5 * max(len(backbones), 1), 4.8),
                                squeeze=False)
    markers = "os^DvP*Xh<>"
    for axis, backbone in zip(axes[0], backbones, strict=False):
        part = cells[cells["backbone"] == backbone]
        dims = list(dict.fromkeys(part["dim"]))
        for number, (index, rows) in enumerate(part.groupby("index", sort=False)):
            for _, row in rows.iterrows():
                axis.scatter(row["ann_recall_at_10"], row["qps"], color=f"C{number % 10}",
                             marker=markers[dims.index(row["dim"]) % len(markers)], s=60,
                             label=f"{index}, {row['dim']}")
        axis.set_yscale("log")
        axis.set_xlabel(f"recall@10 against exact search ({RECALL_QPS_PROTOCOL} queries)")
        axis.set_ylabel("queries per second, one thread")
        axis.set_title(f"{backbone}: each grid cell at its operating point")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(out)
    return len(cells)
