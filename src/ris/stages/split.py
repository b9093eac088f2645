"""DVC stage `split`: the seeded, stratified train / val / test split by image, the same for every backbone."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ris.config import Config
from ris.data.catalog import read_image_table
from ris.data.split import SPLITS, split_collection
from ris.paths import PipelinePaths, write_json_atomic
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main


def run(cfg: Config) -> dict:
    """Split the collection's images (excluded classes left out) and write the table and a summary."""
    paths = PipelinePaths(cfg)
    table = read_image_table(paths.image_table)
    split = split_collection(table[~table["class"].isin(cfg.data.exclude_classes)], cfg.data.split)
    partial = paths.split_table.with_name(f".{paths.split_table.name}.{os.getpid()}.partial")
    split.to_parquet(partial, index=False)
    os.replace(partial, paths.split_table)
    counts = split["split"].value_counts()
    report = {"seed": cfg.data.split.seed, "classes": int(split["class"].nunique()),
              "images": {name: int(counts.get(name, 0)) for name in SPLITS},
              "shares": {name: getattr(cfg.data.split, name) for name in SPLITS}}
    write_json_atomic(paths.split_report, report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    def body() -> Done:
        cfg = load_stage_config(parse_stage_args("split", argv))
        report, paths = run(cfg), PipelinePaths(cfg)
        counts = ", ".join(f"{count:,} {name}" for name, count in report["images"].items())
        return Done([paths.image_table], [paths.split_table, paths.split_report], counts)

    stage_main("split", body)


if __name__ == "__main__":
    main()
