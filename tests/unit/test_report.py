"""The report stage: one results table for the current grid, and no metric files of cells that left it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import build_tiny_pipeline

from ris.cell import grid_cells
from ris.checks import read_params
from ris.config import with_backbone
from ris.stages import evaluate, extract, index, pca_sweep, reduce, report

SWEEP = ["tracking.enabled=false", "reduce.sweep.dims=[4,8,full]"]


def test_cells_that_left_the_grid_leave_no_metric_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = build_tiny_pipeline(tmp_path, SWEEP)
    monkeypatch.chdir(tmp_path)
    cfg = read_params(params)
    pca_sweep.run(cfg)
    for cell in grid_cells(cfg):
        evaluate.run(cfg, cell)
    table = report.run(cfg)
    assert (tmp_path / "reports/recall-qps.png").stat().st_size > 10_000  # every cell's recall against its speed
    # The served cell (search.dim=8, search.index=annoy) sums the run up at keys no backbone or grid changes.
    summary = json.loads((tmp_path / "reports/summary.json").read_text())
    assert (summary["backbone"], summary["dim"], summary["index"]) == ("test_efficientnet", "8", "annoy")
    served = table[(table["dim"] == "8") & (table["index"] == "annoy") & (table["rerank"] == "none")]
    assert summary["heldout"]["map_at_r"] == served.set_index("protocol").loc["heldout", "map_at_r"]
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
    assert (tmp_path / "reports/grid.md").read_text().count("brute + k_reciprocal") == 2
    assert [path.relative_to(tmp_path).as_posix() for path in (tmp_path / "reports/metrics").rglob("*.json")] == [
        "reports/metrics/test_efficientnet/8-brute.json"]
    assert not stray.parent.exists()
    assert len(pd.read_csv(tmp_path / "reports/results.csv")) == len(table)
    summary = json.loads((tmp_path / "reports/summary.json").read_text())
    assert (summary["dim"], summary["index"]) == ("8", "brute")  # the served cell left the grid: its first cell


def test_two_backbones_each_get_their_cells_and_a_row_of_the_backbone_table(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalogue backbone beside the primary: its own features, sweep and cells; the primary is not re-embedded;
    the backbone table's exact-search accuracy equals the grid's exact cells, and random weights show no accuracy."""
    second = ["+backbones.test_resnet.name=test_resnet", "+backbones.test_resnet.pretrained=false",
              "+backbones.test_resnet.num_workers=0", "+backbones.test_resnet.devices=1",
              "grid.backbones=[test_efficientnet,test_resnet]"]
    params = build_tiny_pipeline(tmp_path, [*SWEEP, *second])
    monkeypatch.chdir(tmp_path)
    cfg = read_params(params)
    assert cfg.grid.backbones == ["test_efficientnet", "test_resnet"]
    assert extract.run(cfg)["embedded"] == 0  # the primary's images are already embedded: only the cache is read
    for name in cfg.grid.backbones:
        each = with_backbone(cfg, name)
        if name == "test_resnet":
            assert extract.run(each)["embedded"] == 18
            for dim in (None, 8):
                reduce.run(each, dim)
                for index_name in ("brute", "annoy"):
                    index.run(each, dim, index_name)
        pca_sweep.run(each)
        for cell in grid_cells(each):
            evaluate.run(each, cell)
    assert (tmp_path / "artifacts/features/test_resnet").is_dir() and (tmp_path / "reports/pca/test_resnet").is_dir()
    table = report.run(cfg)
    assert list(dict.fromkeys(table["backbone"])) == ["test_efficientnet", "test_resnet"]

    backbones = pd.read_csv(tmp_path / "reports/backbones.csv")
    assert list(backbones["backbone"]) == ["test_efficientnet", "test_resnet"]
    assert (backbones["parameters"] > 0).all() and (backbones["gflops"] > 0).all()
    assert list(backbones["feature_dim"]) == [extract.run(with_backbone(cfg, name))["dim"]
                                              for name in cfg.grid.backbones]
    for name in cfg.grid.backbones:
        exact = table[(table["backbone"] == name) & (table["dim"] == "full") & (table["index"] == "brute")
                      & (table["rerank"] == "none")].set_index("protocol")
        for protocol in cfg.eval.protocols:
            assert backbones.loc[backbones["backbone"] == name, f"{protocol}/full/map_at_r"].item() == \
                pytest.approx(exact.loc[protocol, "map_at_r"], abs=1e-9)
    # Both are random-weight backbones: every accuracy cell of the Markdown says so instead of showing a number.
    accuracy_rows = [line for section in (tmp_path / "reports/backbones.md").read_text().split("### Accuracy")[1:]
                     for line in section.splitlines() if line.startswith("| test_")]
    assert len(accuracy_rows) == 2 * len(cfg.eval.protocols)
    for line in accuracy_rows:
        cells = [cell.strip() for cell in line.strip("|").split("|")][2:]
        assert cells and all(cell == "random weights" for cell in cells)


def test_results_md_sets_the_books_figures_beside_this_runs_measurements():
    from ris.evaluate.book import BOOK_FINETUNED, BOOK_PRETRAINED, beside_the_book

    cells = [("full", "brute", 0.85, 0.55, 1700.0, 1.0), ("100", "brute", 0.86, 0.56, 120.0, 1.0),
             ("100", "hnsw", 0.87, 0.50, 18.0, 0.98)]  # the ANN row's higher mP@4 is not an exact-search result
    results = pd.DataFrame([{"backbone": "m", "dim": dim, "index": index, "family": index, "rerank": "none",
                             "protocol": protocol,
                             "precision_at_4": p4 - (0.01 if protocol == "heldout" else 0), "map_at_r": mapr,
                             "vector_dim": 1280 if dim == "full" else 100, "latency_p50_us": p50,
                             "ann_recall_at_10": recall}
                            for dim, index, p4, mapr, p50, recall in cells for protocol in ("book", "heldout")])
    backbones = pd.DataFrame([{"backbone": "m", "images_per_second": 81.2, "device": "2 x cpu"}])
    finetune = pd.DataFrame([{"training": "heldout", "protocol": protocol, "model": "finetuned",
                              "precision_at_4": value} for protocol, value in (("book", 0.97), ("heldout", 0.925))])
    text = beside_the_book(results, backbones, finetune, primary="m", chosen_dim="100")
    assert BOOK_PRETRAINED in text and BOOK_FINETUNED in text
    assert "86.00 % mP@4, MAP@R 56.00 %: m, 100 (100-d), exact search; held-out 85.00 %" in text
    assert "fastest p50 18 µs (hnsw, 100, recall@10 98.00 %); exact scan 120 µs" in text
    assert "97.00 % mP@4 (book protocol, leaky" in text and "never saw 92.50 %" in text
    assert "81.2 images/s end to end, m on 2 x cpu" in text
    # Without an exact-search cell there is no accuracy row to claim; other eval.k values name their own metric.
    approximate = results[results["family"] != "brute"]
    assert "pretrained accuracy" not in beside_the_book(approximate, backbones, None, primary="m", chosen_dim="100")


def test_the_results_page_answers_the_books_questions_in_its_order_with_protocols():
    from ris.evaluate.book import algorithm_table, pca_table, results_page

    results = pd.DataFrame([{"backbone": "m", "dim": dim, "index": index, "family": family, "rerank": "none",
                             "protocol": protocol, "precision_at_4": 0.8,
                             "map_at_r": 0.5 + (protocol == "heldout") / 10,
                             "vector_dim": 8, "latency_p50_us": p50, "latency_p99_us": 2 * p50, "qps": 1e6 / p50,
                             "ann_recall_at_10": recall, "index_build_seconds": 0.5, "index_bytes": 2**20}
                            for dim, index, family, p50, recall in [("full", "brute", "brute", 100.0, 1.0),
                                                                    ("8", "hnsw", "hnsw", 10.0, 0.97)]
                            for protocol in ("book", "heldout")])
    sweep = pd.DataFrame([{"dim": dim, "vector_dim": int(dim), "whiten": whiten, "renormalize": False,
                           "protocol": protocol, "precision_at_4": 0.7, "precision_at_1": 0.75, "map_at_r": value,
                           "explained_variance": 0.6, "latency_p50_us": 40.0}
                          for dim, value in (("8", 0.4), ("16", 0.5)) for whiten in (False, True)
                          for protocol in ("book", "heldout")])
    curve = pca_table(sweep)
    assert list(curve["dim"]) == ["8", "16"] and list(curve["held-out MAP@R %"]) == [40.0, 50.0]  # plain PCA only
    algorithms = algorithm_table(results, "m")
    assert list(algorithms["index"]) == ["brute (book)", "hnsw"]
    assert list(algorithms["recall@10 vs exact %"]) == [100.0, 97.0]
    assert list(algorithms["held-out MAP@R %"]) == [60.0, 60.0]
    page = results_page(beside="### Beside the book\n\nthe comparison\n", backbones_md="### What each backbone is\n",
                        sweep=sweep, choice={"rule": "the smallest within 0.5 points", "dim": 16}, results=results,
                        finetune_md="# Fine-tuning: pretrained vs fine-tuned\n\n### `heldout` protocol\n",
                        primary="m", date="2026-12-02", where="a CPU, 2 cores")
    assert page.startswith("# Results\n") and "Written 2026-12-02 on a CPU, 2 cores" in page
    order = ["## Beside the book", "## Backbones", "### What each backbone is", "## Feature length", "chose **16**",
             "## Search algorithms", "brute (book)", "## Fine-tuning: pretrained", "#### `heldout` protocol"]
    assert [page.index(text) for text in order] == sorted(page.index(text) for text in order)
