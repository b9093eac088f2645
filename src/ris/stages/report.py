"""DVC stage `report`: gather the current grid's cells into one results table (CSV and Markdown)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ris.config import Config, parse_dim
from ris.evaluate.results import results_table, stale_metric_files, to_markdown
from ris.paths import PipelinePaths, write_text_atomic
from ris.stages._common import load_stage_config, log, parse_stage_args, stage_main


def run(cfg: Config) -> pd.DataFrame:
    """Write ``results.csv`` and ``results.md`` for every ``grid.dims`` x ``grid.indexes`` cell, in grid order.

    Metric files of cells that left the grid (another dimension, index or backbone) are deleted, so ``reports/``
    and `dvc metrics show` hold the current grid only; MLflow keeps every run ever made.
    """
    paths = PipelinePaths(cfg)
    files = [paths.metrics_file(parse_dim(str(dim)), index) for dim in cfg.grid.dims for index in cfg.grid.indexes]
    table = results_table(files, cfg.eval)
    for stale in stale_metric_files(paths.reports_dir / "metrics", files):
        log.info("deleting %s: its cell is no longer in the grid", stale)
        stale.unlink()
        if stale.parent != paths.reports_dir / "metrics" and not any(stale.parent.iterdir()):
            stale.parent.rmdir()  # a backbone with no cell left
    write_text_atomic(paths.reports_dir / "results.csv", table.to_csv(index=False))
    write_text_atomic(paths.reports_dir / "results.md", to_markdown(table, cfg.eval))
    return table


def main(argv: Sequence[str] | None = None) -> None:
    stage_main("report", lambda: run(load_stage_config(parse_stage_args("report", argv))))


if __name__ == "__main__":
    main()
