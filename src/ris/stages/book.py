"""DVC stage `book`: ``reports/book.md``, the book's chapter-4 figures beside this run's measurements
(:mod:`ris.evaluate.book`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pandas as pd

from ris.evaluate.book import beside_the_book, machine
from ris.paths import PipelinePaths, write_text_atomic
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("book", argv)

    def body() -> Done:
        cfg = load_stage_config(args)
        paths = PipelinePaths(cfg)
        reports = paths.reports_dir
        results, backbones = pd.read_csv(reports / "results.csv"), pd.read_csv(reports / "backbones.csv")
        finetune_file = paths.finetune_reports / "results.csv"
        chosen = backbones.loc[backbones["backbone"] == cfg.backbone.name, "chosen_dim"]
        text = beside_the_book(results, backbones, pd.read_csv(finetune_file), primary=cfg.backbone.name,
                               chosen_dim=str(chosen.iloc[0]) if len(chosen) else "not measured",
                               date=date.today().isoformat(), where=machine(), k=cfg.eval.k,
                               recall_k=cfg.eval.ann_recall_k)
        write_text_atomic(reports / "book.md", text)
        return Done([reports / "results.csv", reports / "backbones.csv", finetune_file], [reports / "book.md"])

    stage_main("book", body)


if __name__ == "__main__":
    main()
