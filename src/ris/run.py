"""`ris run`: evaluate one variant end to end as a Hydra app; `ris run -m ...` sweeps a grid of them.

Every job reuses what already exists (the prepared collection, and any feature store with the same key, the one
`dvc repro` wrote included), fits the reducer and builds the index in memory, and logs one MLflow run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ris.config import Config, ConfigError, load_config
from ris.data import prepare_collection
from ris.embed.extract import plan_extraction, run_extraction
from ris.embed.store import FeatureSet, load_features, stored_key
from ris.experiment import build_index, evaluate_variant, folder_bytes, single_variant, track_variant
from ris.paths import CONF_DIR, PipelinePaths
from ris.reduce import fit_reducer

log = logging.getLogger("ris.run")


def features_for(cfg: Config) -> FeatureSet:
    """The collection's embeddings for ``cfg.backbone``: the DVC stage's store when its key matches, else a cache
    folder per key under ``<artifacts>/cache/features`` (extracted once, reused by every later job)."""
    paths = PipelinePaths(cfg)
    if not paths.image_table.exists():
        prepare_collection(cfg.data)
    plan = plan_extraction(pd.read_parquet(paths.image_table), cfg.backbone, cfg.data.exclude_classes)
    cached = Path(cfg.paths.artifacts) / "cache" / "features" / cfg.backbone.name / plan.key
    for folder in (paths.features_dir, cached):
        if stored_key(folder) == plan.key:
            log.info("reusing features %s from %s", plan.key, folder)
            return load_features(folder)
    return run_extraction(plan, paths.images_dir, cached)


def run_variant(cfg: Config) -> dict[str, float]:
    """Reduce, index, evaluate and track the variant ``cfg`` selects; return its metrics."""
    variant = single_variant(cfg)
    features = features_for(cfg)
    try:
        reducer = fit_reducer(features.embeddings, variant.dim, method=cfg.reduce.method, whiten=cfg.reduce.whiten)
    except ValueError as error:
        raise ConfigError(f"config key 'reduce.dim' is {variant.dim}: {error}") from error
    vectors = reducer.transform(features.embeddings)
    index, build_seconds = build_index(vectors, variant.index)
    with tempfile.TemporaryDirectory() as folder:
        index.save(Path(folder))
        index_bytes = folder_bytes(Path(folder))
    metrics = evaluate_variant(index, vectors, features.labels, cfg)
    metrics.update({"index_build_seconds": build_seconds, "index_bytes": index_bytes,
                    "vector_dim": reducer.output_dim, "pca_explained_variance": reducer.explained_variance})
    track_variant(cfg, variant, metrics, source="hydra", features_key=features.meta["key"])
    log.info("%s: %s", variant.name, json.dumps({key: round(value, 4) for key, value in metrics.items()}))
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(raw: DictConfig) -> float:
    """Hydra entry point; returns the book-protocol precision so sweepers can optimise it."""
    cfg = load_config(OmegaConf.to_container(raw, resolve=True), check_model=True)  # type: ignore[arg-type]
    metrics = run_variant(cfg)
    return metrics[f"book_precision_at_{cfg.eval.k}"]
