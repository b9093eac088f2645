"""DVC stage `evaluate`: measure one grid cell (accuracy, recall, latency) and track it in MLflow."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ris.config import Config
from ris.embed.store import META_FILE, ROWS_FILE
from ris.experiment import Variant, evaluate_variant, grid_variant, track_variant
from ris.index import load_index
from ris.paths import PipelinePaths, dim_label, write_json_atomic
from ris.reduce.pca import SUMMARY_FILE
from ris.stages._common import load_stage_config, parse_stage_args, timed
from ris.stages.index import BUILD_FILE
from ris.stages.reduce import REDUCED_FILE


def run(cfg: Config, variant: Variant) -> dict:
    """Evaluate the saved index of ``variant``; write its metrics JSON and log one MLflow run."""
    paths = PipelinePaths(cfg)
    reduced_dir = paths.reduced_dir(variant.dim)
    vectors = np.load(reduced_dir / REDUCED_FILE)
    labels = pd.read_parquet(paths.features_dir / ROWS_FILE)["class"].to_numpy()
    index_dir = paths.index_dir(variant.dim, variant.index.name)
    index = load_index(index_dir)
    with timed(f"evaluate {variant.name}"):
        metrics = evaluate_variant(index, vectors, labels, cfg)
    build = json.loads((index_dir / BUILD_FILE).read_text())
    reducer = json.loads((reduced_dir / SUMMARY_FILE).read_text())
    metrics.update({"index_build_seconds": build["build_seconds"], "index_bytes": build["index_bytes"],
                    "vector_dim": build["dim"], "pca_explained_variance": reducer["explained_variance"]})
    report = {"backbone": variant.backbone, "dim": dim_label(variant.dim), "index": variant.index.name,
              "protocol": cfg.eval.protocol, "metrics": metrics}
    metrics_file = paths.metrics_file(variant.dim, variant.index.name)
    write_json_atomic(metrics_file, report)
    features_key = json.loads((paths.features_dir / META_FILE).read_text())["key"]
    track_variant(cfg, variant, metrics, source="dvc", features_key=features_key, artifacts=[metrics_file])
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("evaluate", argv, cell=True)
    cfg = load_stage_config(args)
    run(cfg, grid_variant(cfg, args.dim, args.index))


if __name__ == "__main__":
    main()
