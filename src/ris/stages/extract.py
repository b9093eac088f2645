"""DVC stage `extract`: embed every collection image with the configured backbone."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ris.config import Config
from ris.embed.extract import extract_features
from ris.paths import PipelinePaths, write_json_atomic
from ris.stages._common import load_stage_config, parse_stage_args


def run(cfg: Config) -> dict:
    """Write the feature store for ``cfg.backbone`` and a throughput report."""
    paths = PipelinePaths(cfg)
    features = extract_features(pd.read_parquet(paths.image_table), paths.images_dir, cfg.backbone,
                                paths.features_dir, exclude_classes=cfg.data.exclude_classes, reuse=False)
    meta = features.meta
    report = {"backbone": cfg.backbone.name, "images": meta["images"], "dim": meta["dim"],
              "seconds": meta["seconds"], "images_per_second": meta["images_per_second"], "device": meta["device"],
              "weights": meta["weights"]["kind"], "batch_size": cfg.backbone.batch_size,
              "precision": cfg.backbone.precision}
    write_json_atomic(paths.extract_report, report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    run(load_stage_config(parse_stage_args("extract", argv)))


if __name__ == "__main__":
    main()
