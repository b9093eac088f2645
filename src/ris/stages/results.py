"""DVC stage `results`: ``reports/results.md``, the page people read. The book's chapter-4 figures beside this run's,
then its questions in order (backbones, feature length, search algorithms, fine-tuning), each answered from the
pipeline's reports (:mod:`ris.evaluate.book`). The last stage: it reads every other stage's report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date

import pandas as pd

from ris.evaluate.book import beside_the_book, machine, results_page
from ris.paths import PipelinePaths, write_text_atomic
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("results", argv)

    def body() -> Done:
        cfg = load_stage_config(args)
        paths = PipelinePaths(cfg)
        reports = paths.reports_dir
        results, backbones = pd.read_csv(reports / "results.csv"), pd.read_csv(reports / "backbones.csv")
        finetune_table, finetune_page = paths.finetune_reports / "results.csv", paths.finetune_reports / "results.md"
        chosen = backbones.loc[backbones["backbone"] == cfg.backbone.name, "chosen_dim"]
        today, where = date.today().isoformat(), machine()
        beside = beside_the_book(results, backbones, pd.read_csv(finetune_table), primary=cfg.backbone.name,
                                 chosen_dim=str(chosen.iloc[0]) if len(chosen) else "not measured",
                                 k=cfg.eval.k, recall_k=cfg.eval.ann_recall_k)
        text = results_page(beside=beside, backbones_md=(reports / "backbones.md").read_text(),
                            sweep=pd.read_csv(paths.pca_sweep_table), choice=json.loads(paths.pca_choice.read_text()),
                            results=results, finetune_md=finetune_page.read_text(), primary=cfg.backbone.name,
                            date=today, where=where, k=cfg.eval.k, recall_k=cfg.eval.ann_recall_k)
        write_text_atomic(reports / "results.md", text)
        read = [reports / "results.csv", reports / "backbones.csv", reports / "backbones.md", paths.pca_sweep_table,
                paths.pca_choice, finetune_table, finetune_page]
        return Done(read, [reports / "results.md"])

    stage_main("results", body)


if __name__ == "__main__":
    main()
