"""DVC stage `finetune_report`: every fine-tune's comparison in one table and its learning curves in one figure,
after checking the pretrained numbers against the grid's own exact-search cell."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ris.config import Config
from ris.finetune.report import check_against_grid, comparison_table, plot_curves, read_reports, to_markdown
from ris.paths import PipelinePaths, write_text_atomic
from ris.stages._common import Done, load_stage_config, log, parse_stage_args, stage_main


def run(cfg: Config) -> pd.DataFrame:
    """Write ``results.csv``, ``results.md`` and ``curves.png`` under ``reports/finetune/<backbone>/``."""
    paths = PipelinePaths(cfg)
    folder = paths.finetune_reports
    trainings = cfg.finetune.trainings
    reports = read_reports([paths.finetune_training_report(training) for training in trainings])
    checked = check_against_grid(reports, paths.metrics_file(None, "brute"))
    log.info("pretrained numbers agree with the grid's full/brute cell under %s", ", ".join(checked) or "nothing")
    table = comparison_table(reports)
    write_text_atomic(folder / "results.csv", table.to_csv(index=False))
    write_text_atomic(folder / "results.md", to_markdown(table, reports))
    plot_curves({training: pd.read_csv(paths.finetune_history(training)) for training in trainings},
                folder / "curves.png")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    def body() -> Done:
        cfg = load_stage_config(parse_stage_args("finetune_report", argv))
        table, paths = run(cfg), PipelinePaths(cfg)
        folder = paths.finetune_reports
        return Done([folder / "trainings", paths.metrics_file(None, "brute")],
                    [folder / "results.csv", folder / "results.md", folder / "curves.png"], f"{len(table):,} rows")

    stage_main("finetune_report", body)


if __name__ == "__main__":
    main()
