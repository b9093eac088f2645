"""DVC stage `report`: gather the grid's cells into one results table (``results.csv``, ``grid.md``) and a
recall-QPS figure, and its backbones into the backbone table (CSV and Markdown each)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ris.config import Config, dim_label, parse_dim, with_backbone
from ris.evaluate.backbones import BackboneReports, backbone_table, backbones_markdown
from ris.evaluate.results import (headline_summary, recall_qps_figure, results_table, stale_metric_files,
                                  to_markdown)
from ris.paths import PipelinePaths, write_json_atomic, write_text_atomic
from ris.stages._common import Done, load_stage_config, log, parse_stage_args, stage_main


def run(cfg: Config) -> pd.DataFrame:
    """Write ``results.csv``, ``grid.md`` and the ``recall-qps.png`` figure for every ``grid.backbones`` x
    ``grid.dims`` x ``grid.indexes`` cell, in grid order, ``backbones.csv`` / ``backbones.md`` for every backbone
    of the grid, and ``summary.json``: the served cell's headline metrics (``search.dim`` and ``search.index`` of
    the primary backbone, or the grid's first cell when that one is not in the grid), at fixed keys so that any two
    experiments compare.

    Metric files of cells that left the grid (another dimension, index or backbone) are deleted, so ``reports/``
    and `dvc metrics show` hold the current grid only; MLflow keeps every run ever made.
    """
    paths = PipelinePaths(cfg)
    backbone_paths = [PipelinePaths(with_backbone(cfg, name)) for name in cfg.grid.backbones]
    files = [each.metrics_file(parse_dim(str(dim)), index)
             for each in backbone_paths for dim in cfg.grid.dims for index in cfg.grid.indexes]
    table = results_table(files, cfg.eval)
    for stale in stale_metric_files(paths.reports_dir / "metrics", files):
        log.info("deleting %s: its cell is no longer in the grid", stale)
        stale.unlink()
        if stale.parent != paths.reports_dir / "metrics" and not any(stale.parent.iterdir()):
            stale.parent.rmdir()  # a backbone with no cell left
    write_text_atomic(paths.reports_dir / "results.csv", table.to_csv(index=False))
    write_text_atomic(paths.reports_dir / "grid.md", to_markdown(table, cfg.eval))
    recall_qps_figure(table, paths.reports_dir / "recall-qps.png")
    reports = [BackboneReports.read(each.extract_report, each.pca_sweep_table, each.pca_choice)
               for each in backbone_paths]
    backbones = backbone_table(reports, cfg.eval, whiten=cfg.reduce.whiten, renormalize=cfg.reduce.renormalize)
    write_text_atomic(paths.reports_dir / "backbones.csv", backbones.to_csv(index=False))
    write_text_atomic(paths.reports_dir / "backbones.md", backbones_markdown(backbones, cfg.eval))
    served = paths.metrics_file(parse_dim(dim_label(cfg.search.dim)), cfg.search.index)
    write_json_atomic(paths.reports_dir / "summary.json", headline_summary(served if served in files else files[0]))
    return table


def main(argv: Sequence[str] | None = None) -> None:
    def body() -> Done:
        cfg = load_stage_config(parse_stage_args("report", argv))
        table, paths = run(cfg), PipelinePaths(cfg)
        reports = paths.reports_dir
        return Done([reports / "metrics", reports / "extract", reports / "pca"],
                    [reports / name for name in ("results.csv", "grid.md", "recall-qps.png", "backbones.csv",
                                                 "backbones.md", "summary.json")], f"{len(table):,} result rows")

    stage_main("report", body)


if __name__ == "__main__":
    main()
