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
import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ris.artifacts import ArtifactError
from ris.cell import grid_cells, run_cell, track_cell
from ris.checks import checked_config
from ris.config import Config, with_backbone
from ris.data.catalog import check_unchanged, image_root, read_image_table
from ris.data.prepare import ensure_collection
from ris.data.split import split_collection, splits_for_rows
from ris.embed.extract import feature_key, plan_extraction, run_extraction, select_rows
from ris.embed.store import FeatureSet, load_features, read_meta, stored_key
from ris.embed.weights import WeightsUnavailableError
from ris.errors import UserFacingError
from ris.locks import locked
from ris.paths import PipelinePaths, conf_dir

log = logging.getLogger("ris.run")

# Hydra's log folders carry the process id: two runs started in the same second never share one.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


def features_for(cfg: Config) -> FeatureSet:
    """The collection's embeddings for ``cfg.backbone``: the DVC stage's store when its key matches, else a store
    per key under ``<artifacts>/cache/features`` (built from the embedding cache, so images are embedded once)."""
    paths = PipelinePaths(cfg)
    ensure_collection(cfg.data)
    # Shared: the collection may not be replaced while its images are planned and embedded.
    with locked(paths.collection_dir, exclusive=False):
        table = read_image_table(paths.image_table)
        try:
            plan = plan_extraction(table, cfg.backbone, cfg.data.exclude_classes)
        except WeightsUnavailableError as error:
            return stored_features_without_weights(cfg, select_rows(table, cfg.data.exclude_classes), error)
        if stored_key(paths.features_dir) == plan.key:
            log.info("reusing features %s from %s", plan.key, paths.features_dir)
            return load_features(paths.features_dir, expect_key=plan.key)
        cached = paths.feature_cache / plan.key
        # Exclusive while extracting: a second process asking for the same features waits, then reuses them.
        with locked(cached, exclusive=True):
            if stored_key(cached) == plan.key:
                log.info("reusing features %s from %s", plan.key, cached)
                return load_features(cached, expect_key=plan.key)
            cache_dir = paths.embedding_cache / cfg.backbone.name / plan.extractor_key
            root = image_root(paths.images_dir)
            if root != paths.images_dir:  # catalogued in place: check the folder is still the one catalogued
                check_unchanged(table, root)
            return run_extraction(plan, root, cached, cache_dir=cache_dir)


def stored_features_without_weights(cfg: Config, rows: pd.DataFrame, error: WeightsUnavailableError) -> FeatureSet:
    """Features already stored for these exact images and this backbone setting, when its weights are not here.

    The weights file cannot be hashed, so the match is on what the store describes: the backbone's name,
    pretraining, precision and normalisation, and the exact images (the store's key recomputed over ``rows``).

    Raises:
        WeightsUnavailableError: ``error``, when no stored features match.
    """
    paths = PipelinePaths(cfg)
    for folder in [paths.features_dir, *sorted(paths.feature_cache.glob("*"))]:
        try:
            meta = read_meta(folder)
        except ArtifactError:
            continue
        same_backbone = all(meta["backbone"].get(name) == getattr(cfg.backbone, name)
                            for name in ("name", "pretrained", "precision", "normalize"))
        if same_backbone and feature_key(meta["extractor_key"], rows) == meta["key"]:
            log.warning("%s; using the stored features %s (weights %s) from %s", error, meta["key"],
                        meta["weights"]["identity"], folder)
            return load_features(folder, expect_key=meta["key"])
    raise error


def splits_for(cfg: Config, features: FeatureSet) -> np.ndarray:
    """The split of every feature row, made from ``data.split`` as the split stage makes it."""
    return splits_for_rows(split_collection(features.rows, cfg.data.split), features.rows)


def run_grid(cfg: Config, artifacts: list[Path] | None = None) -> list[dict]:
    """Evaluate and track every cell of ``cfg.grid``, backbone by backbone, each run with ``artifacts`` (the job's
    config); return their reports."""
    reports = []
    for name in cfg.grid.backbones:
        backbone_cfg = with_backbone(cfg, name)
        features = features_for(backbone_cfg)
        splits = splits_for(backbone_cfg, features)
        for cell in grid_cells(backbone_cfg):
            result = run_cell(backbone_cfg, cell, features, splits)
            track_cell(backbone_cfg, result, source="hydra", features_key=features.key, artifacts=artifacts)
            log.info("%s: %s", cell.name, json.dumps(result.report()["protocols"], default=float))
            reports.append(result.report())
    return reports


def job_config_files() -> list[Path]:
    """The config Hydra saved for this job (``.hydra/config.yaml`` and its overrides), for each run's artifacts."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is None:
        return []
    folder = Path(HydraConfig.get().runtime.output_dir) / HydraConfig.get().output_subdir
    return [path for path in (folder / "config.yaml", folder / "overrides.yaml") if path.is_file()]


def job(raw: DictConfig) -> float:
    """One Hydra job; returns the first cell's first-protocol MAP@R so sweepers can optimise it."""
    try:
        cfg = checked_config(OmegaConf.to_container(raw, resolve=True), check_model=True)  # type: ignore[arg-type]
        reports = run_grid(cfg, job_config_files())
    except UserFacingError as error:
        if os.environ.get("RIS_DEBUG") == "1":
            raise
        raise SystemExit(f"ris run: {error}") from None
    return reports[0]["protocols"][cfg.eval.protocols[0]]["map_at_r"]


def hydra_main(args: list[str]) -> None:
    """Run `ris run ARGS` as a Hydra app over the working directory's ``conf/`` (read when called, not imported)."""
    sys.argv = ["ris run", *args]  # Hydra reads its overrides and flags from sys.argv
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(job)()
