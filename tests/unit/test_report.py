"""The report stage: one results table for the current grid, and no metric files of cells that left it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import build_tiny_pipeline

from ris.checks import read_params
from ris.stages import evaluate, report


def test_cells_that_left_the_grid_leave_no_metric_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = build_tiny_pipeline(tmp_path, ["tracking.enabled=false"])
    monkeypatch.chdir(tmp_path)
    cfg = read_params(params)
    from ris.cell import grid_cells

    for cell in grid_cells(cfg):
        evaluate.run(cfg, cell)
    report.run(cfg)
    metrics = tmp_path / "reports/metrics/test_efficientnet"
    assert sorted(path.name for path in metrics.iterdir()) == ["8-annoy.json", "8-brute.json", "full-annoy.json",
                                                               "full-brute.json"]
    stray = tmp_path / "reports/metrics/resnet50/100-annoy.json"  # another backbone's cell, from an older grid
    stray.parent.mkdir(parents=True)
    stray.write_text((metrics / "8-annoy.json").read_text())

    raw = yaml.safe_load(params.read_text())
    raw["grid"] = {"dims": [8], "indexes": ["brute"]}
    params.write_text(yaml.safe_dump(raw))
    table = report.run(read_params(params))
    # One cell, two protocols, each with one row per reranker eval.rerank measures on brute cells.
    assert list(table["rerank"]) == ["none", "aqe", "k_reciprocal"] * 2
    assert (tmp_path / "reports/results.md").read_text().count("brute + k_reciprocal") == 2
    assert [path.relative_to(tmp_path).as_posix() for path in (tmp_path / "reports/metrics").rglob("*.json")] == [
        "reports/metrics/test_efficientnet/8-brute.json"]
    assert not stray.parent.exists()
    assert len(pd.read_csv(tmp_path / "reports/results.csv")) == len(table)
