"""The backbone table: for each backbone of the grid, its size, its cost, how fast it embedded the collection here,
and its exact-search accuracy at full dimension and at its own PCA sweep's choice, under every protocol.

Everything comes from what the pipeline wrote (the extract stage's report, the PCA sweep's table and choice), so the
table is rebuilt, never re-measured. A backbone with random weights keeps its size, cost and speed (they do not
depend on the weights), but its accuracy is not shown: it is not a result about that backbone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ris.artifacts import ArtifactError
from ris.config import FULL_DIM, EvalConfig
from ris.evaluate.protocols import PROTOCOLS

RANDOM_WEIGHTS = "random"
"""The weights kind whose accuracy is not an accuracy result."""


@dataclass(frozen=True)
class BackboneReports:
    """What the pipeline wrote about one backbone: the extract stage's report and the PCA sweep's table and choice."""

    extract: dict
    sweep: pd.DataFrame
    choice: dict

    @classmethod
    def read(cls, extract_report: Path, sweep_table: Path, choice_file: Path) -> BackboneReports:
        """Read the three files, checking they are there and describe the same backbone.

        Raises:
            ArtifactError: a file is missing or belongs to another backbone.
        """
        for path in (extract_report, sweep_table, choice_file):
            if not path.is_file():
                raise ArtifactError(f"{path} not found: run `dvc repro` (the extract and pca_sweep stages write it)")
        extract = json.loads(extract_report.read_text())
        choice = json.loads(choice_file.read_text())
        if extract["backbone"] != choice["backbone"]:
            raise ArtifactError(f"{choice_file} is the PCA sweep of {choice['backbone']}, but {extract_report} "
                                f"reports {extract['backbone']}: run `dvc repro`")
        return cls(extract, pd.read_csv(sweep_table, dtype={"dim": str}), choice)


def _accuracy_columns(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(metric key in the sweep table, title) of the accuracy shown per protocol and dimension."""
    return [(f"precision_at_{cfg.k}", f"mP@{cfg.k}"), ("precision_at_1", "P@1"), ("map_at_r", "MAP@R")]


def backbone_row(reports: BackboneReports, cfg: EvalConfig, *, whiten: bool, renormalize: bool) -> dict:
    """One backbone's row: facts, speed, and accuracy at ``full`` and at the sweep's chosen dimension.

    The accuracy is the sweep's own exact-search measurement with the pipeline's reduce settings (``whiten``,
    ``renormalize``), so it equals the grid's exact cells at the same dimensions.

    Raises:
        ArtifactError: the sweep has no row for a dimension or protocol the table needs.
    """
    extract, choice = reports.extract, reports.choice
    weights = extract["weights"]
    cost = extract.get("cost") or {}
    # Speed only where this run embedded the whole collection (cache hits are not a measurement of the model).
    measured = extract.get("embedded") == extract["images"] and extract.get("images_per_second")
    row = {"backbone": extract["backbone"], "weights": weights["kind"],
           "weights_identity": weights["file_name"] or weights["identity"], "feature_dim": extract["dim"],
           "parameters": cost.get("parameters"), "gflops": cost.get("gflops"),
           "input_px": extract["preprocessing"]["input_size"][-1], "pool": extract.get("pool") or "model's own",
           "images_per_second": extract["images_per_second"] if measured else None,
           "device": extract.get("device") if measured else None, "chosen_dim": choice["dim"]}
    sweep = reports.sweep
    setting = sweep[(sweep["whiten"] == whiten) & (sweep["renormalize"] == renormalize)]
    for label, dim in (("full", FULL_DIM), ("chosen", str(choice["dim"]))):
        for protocol in cfg.protocols:
            found = setting[(setting["dim"] == dim) & (setting["protocol"] == protocol)]
            if found.empty:
                raise ArtifactError(f"the PCA sweep of {extract['backbone']} has no row for dimension {dim}, protocol "
                                    f"{protocol} (whiten={whiten}, renormalize={renormalize}): run `dvc repro`")
            for key, _ in _accuracy_columns(cfg):
                row[f"{protocol}/{label}/{key}"] = float(found.iloc[0][key])
    return row


def backbone_table(reports: list[BackboneReports], cfg: EvalConfig, *, whiten: bool,
                   renormalize: bool) -> pd.DataFrame:
    """One row per backbone, in the order given (the grid's)."""
    return pd.DataFrame([backbone_row(report, cfg, whiten=whiten, renormalize=renormalize) for report in reports])


def backbones_markdown(table: pd.DataFrame, cfg: EvalConfig) -> str:
    """The people-facing backbone table: what each backbone is and costs, then its accuracy per protocol.

    Rows with random weights show "random weights" in place of every accuracy figure.
    """
    facts = pd.DataFrame({
        "backbone": table["backbone"],
        "weights": [f"{kind}: {identity}" for kind, identity in zip(table["weights"], table["weights_identity"],
                                                                     strict=True)],
        "feature length": table["feature_dim"],
        "parameters (M)": [_number(value, 1e6, 2) for value in table["parameters"]],
        "GFLOPs / image": [_number(value, 1, 2) for value in table["gflops"]],
        "input (px)": table["input_px"],
        "pooling": table["pool"],
        "images/s (extract, end to end)": [
            "—" if pd.isna(speed) else f"{speed:.1f} on {device}"
            for speed, device in zip(table["images_per_second"], table["device"], strict=True)],
    })
    sections = ["### What each backbone is and costs\n", facts.to_markdown(index=False), ""]
    for protocol in cfg.protocols:
        shown = pd.DataFrame({"backbone": table["backbone"], "chosen dim": table["chosen_dim"]})
        for label, title in (("full", "full"), ("chosen", "chosen")):
            for key, metric in _accuracy_columns(cfg):
                values = table[f"{protocol}/{label}/{key}"]
                shown[f"{metric} {title}"] = [
                    "random weights" if kind == RANDOM_WEIGHTS else f"{100 * value:.2f}"
                    for kind, value in zip(table["weights"], values, strict=True)]
        sections += [f"### Accuracy under `{protocol}` (%): {PROTOCOLS[protocol].about}; exact search at full "
                     "dimension and at the PCA sweep's chosen dimension\n", shown.to_markdown(index=False), ""]
    sections.append("GFLOPs count a multiply-add as two operations (torch's FLOP counter, one image at the input "
                    "size). images/s is the extract stage's own measurement, shown only where it embedded the "
                    "whole collection (not served from the embedding cache). Random-weight backbones are shown for "
                    "size, cost and speed only.")
    return "\n".join(sections) + "\n"


def _number(value: float | None, unit: float, digits: int) -> str:
    return "—" if value is None or pd.isna(value) else f"{value / unit:.{digits}f}"
