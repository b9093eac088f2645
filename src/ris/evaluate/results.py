"""The results table: one row per evaluated cell and protocol, for machines (CSV) and for people (Markdown).

Columns, their titles and formats come from :mod:`ris.evaluate.declarations`, so any ``eval.k`` shows up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ris.artifacts import ArtifactError
from ris.config import AUTO_DIM, EvalConfig
from ris.evaluate.declarations import cell_metrics, format_value, protocol_metrics
from ris.evaluate.protocols import PROTOCOLS

KEYS = ["backbone", "dim", "index", "family", "protocol"]


def results_table(metrics_files: Iterable[Path], cfg: EvalConfig) -> pd.DataFrame:
    """One row per (cell, protocol) of the metrics files written by the evaluate stage, in the order given."""
    columns = [spec.key for spec in [*protocol_metrics(cfg), *cell_metrics()]]
    rows = []
    for path in metrics_files:
        if not path.is_file():
            raise ArtifactError(f"{path} not found: run `dvc repro` (the evaluate stage of that cell writes it)")
        report = json.loads(path.read_text())
        for protocol in cfg.protocols:
            metrics = {**report["protocols"][protocol], **report["cell"]}
            rows.append({"backbone": report["backbone"], "dim": report["dim"], "index": report["index"],
                         "family": report["family"], "protocol": protocol,
                         **{key: metrics.get(key) for key in columns}})
    return pd.DataFrame(rows, columns=KEYS + columns)


def to_markdown(table: pd.DataFrame, cfg: EvalConfig) -> str:
    """The people-facing view: one table per protocol, titled and formatted as declared."""
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
        # "auto" (the PCA sweep's choice) shows the dimension it stood for.
        shown["dim"] = [f"{label} ({int(width)})" if label == AUTO_DIM else label
                        for label, width in zip(part["dim"], part["vector_dim"], strict=True)]
        for spec in shown_specs:
            shown[spec.title] = [format_value(spec, value) for value in part[spec.key]]
        sections.append(f"{heading}\n\n{shown.to_markdown(index=False)}\n")
    return "\n".join(sections)


def stale_metric_files(metrics_root: Path, current: Iterable[Path]) -> list[Path]:
    """The metric files under ``metrics_root`` that are not ``current`` (cells that left the grid), sorted."""
    keep = {path.resolve() for path in current}
    return sorted(path for path in metrics_root.rglob("*.json") if path.resolve() not in keep)
