"""`ris run`: evaluate a grid in memory as a Hydra app; `ris run -m ...` sweeps, one job per combination.

A job is a grid like `dvc repro`'s (usually one cell: ``ris run -m grid.dims=64,128 grid.indexes=annoy,brute``
gives four one-cell jobs). Every job reuses what already exists (the prepared collection and split, and any
feature store with the same key, the one `dvc repro` wrote included; embeddings by image hash otherwise), runs
each cell through :func:`ris.cell.run_cell`, and logs one MLflow run per cell and protocol.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ris.cell import grid_cells, run_cell, track_cell
from ris.checks import checked_config
from ris.config import Config
from ris.data.catalog import read_image_table
from ris.data.prepare import prepare_collection
from ris.data.split import split_collection, splits_for_rows
from ris.embed.extract import plan_extraction, run_extraction
from ris.embed.store import FeatureSet, load_features, stored_key
from ris.errors import UserFacingError
from ris.paths import CONF_DIR, PipelinePaths

log = logging.getLogger("ris.run")


def features_for(cfg: Config) -> FeatureSet:
    """The collection's embeddings for ``cfg.backbone``: the DVC stage's store when its key matches, else a store
    per key under ``<artifacts>/cache/features`` (built from the embedding cache, so images are embedded once)."""
    paths = PipelinePaths(cfg)
    if not paths.image_table.exists():
        prepare_collection(cfg.data)
    plan = plan_extraction(read_image_table(paths.image_table), cfg.backbone, cfg.data.exclude_classes)
    cached = Path(cfg.paths.artifacts) / "cache" / "features" / cfg.backbone.name / plan.key
    for folder in (paths.features_dir, cached):
        if stored_key(folder) == plan.key:
            log.info("reusing features %s from %s", plan.key, folder)
            return load_features(folder, expect_key=plan.key)
    cache_dir = paths.embedding_cache / cfg.backbone.name / plan.extractor_key
    return run_extraction(plan, paths.images_dir, cached, cache_dir=cache_dir)


def splits_for(cfg: Config, features: FeatureSet) -> np.ndarray:
    """The split of every feature row, made from ``data.split`` as the split stage makes it."""
    return splits_for_rows(split_collection(features.rows, cfg.data.split), features.rows)


def run_grid(cfg: Config) -> list[dict]:
    """Evaluate and track every cell of ``cfg.grid``; return their reports."""
    features = features_for(cfg)
    splits = splits_for(cfg, features)
    reports = []
    for cell in grid_cells(cfg):
        result = run_cell(cfg, cell, features, splits)
        track_cell(cfg, result, source="hydra", features_key=features.key)
        log.info("%s: %s", cell.name, json.dumps(result.report()["protocols"], default=float))
        reports.append(result.report())
    return reports


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(raw: DictConfig) -> float:
    """Hydra entry point; returns the first cell's first-protocol MAP@R so sweepers can optimise it."""
    try:
        cfg = checked_config(OmegaConf.to_container(raw, resolve=True), check_model=True)  # type: ignore[arg-type]
        reports = run_grid(cfg)
    except UserFacingError as error:
        if os.environ.get("RIS_DEBUG") == "1":
            raise
        raise SystemExit(f"ris run: {error}") from None
    return reports[0]["protocols"][cfg.eval.protocols[0]]["map_at_r"]
