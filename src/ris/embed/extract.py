"""Extraction: image table + backbone config in, a memory-mappable feature store out."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import timm
import torch
from pytorch_lightning.accelerators import CUDAAccelerator

from ris.config import BackboneConfig
from ris.embed.lightning import EmbeddingModule, FeatureMatrixWriter, ImageDataModule
from ris.embed.store import EMBEDDINGS_FILE, META_FILE, ROWS_FILE, FeatureSet, load_features, stored_key
from ris.embed.weights import WeightsSource, create_backbone, resolve_weights

log = logging.getLogger("ris.embed")


def select_rows(table: pd.DataFrame, exclude_classes: list[str]) -> pd.DataFrame:
    """The collection's images in a stable order: every class except the excluded ones, sorted by path."""
    kept = table[~table["class"].isin(exclude_classes)].sort_values("path").reset_index(drop=True)
    return kept[["path", "class", "sha256"]]


def feature_key(backbone: BackboneConfig, source: WeightsSource, data_config: dict[str, Any],
                rows: pd.DataFrame) -> str:
    """Identity of a feature matrix: model, weights, preprocessing, numeric precision, normalisation and the exact
    images (paths, contents and classes)."""
    listing = "\n".join(rows["path"] + "\t" + rows["sha256"] + "\t" + rows["class"])
    images = hashlib.sha256(listing.encode()).hexdigest()
    identity = {"model": source.model, "weights": source.identity, "preprocessing": data_config,
                "precision": backbone.precision, "normalize": backbone.normalize, "images": images}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ExtractionPlan:
    """Everything decided before the first image is read: weights, model, preprocessing, images and their key."""

    backbone: BackboneConfig
    source: WeightsSource
    model: torch.nn.Module
    data_config: dict[str, Any]
    rows: pd.DataFrame
    key: str


def plan_extraction(table: pd.DataFrame, backbone: BackboneConfig,
                    exclude_classes: list[str] | None = None) -> ExtractionPlan:
    """Resolve weights, build the model and its eval preprocessing, select the images, compute the key.

    Raises:
        WeightsUnavailableError: when pretrained weights cannot be had (before any image is read).
        ValueError: when no image is left after excluding classes.
    """
    source = resolve_weights(backbone)
    model = create_backbone(source)
    data_config = timm.data.resolve_model_data_config(model)  # the model's own eval preprocessing
    rows = select_rows(table, exclude_classes or [])
    if rows.empty:
        raise ValueError(f"no images to embed after excluding classes {exclude_classes}")
    return ExtractionPlan(backbone, source, model, data_config, rows, feature_key(backbone, source, data_config, rows))


def run_extraction(plan: ExtractionPlan, images_dir: Path, out_dir: Path, *, progress: bool = True) -> FeatureSet:
    """Embed ``plan.rows`` under ``Trainer.predict`` and write the feature store into ``out_dir``.

    Writes ``embeddings.npy`` (float32, one row per image), ``rows.parquet`` (row-aligned) and ``meta.json``
    (key, weights, preprocessing, throughput); ``meta.json`` is written last, so a store is complete exactly when
    its key is readable.
    """
    backbone, rows = plan.backbone, plan.rows
    transform = timm.data.create_transform(**plan.data_config, is_training=False)
    data = ImageDataModule([images_dir / path for path in rows["path"]], transform, backbone.batch_size,
                           backbone.num_workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    partial = out_dir / f".{EMBEDDINGS_FILE}.{os.getpid()}.partial.npy"
    writer = FeatureMatrixWriter(partial, len(rows))
    trainer = pl.Trainer(accelerator=backbone.accelerator, devices=1, precision=backbone.precision,
                         callbacks=[writer], logger=False, enable_progress_bar=progress,
                         enable_checkpointing=False, enable_model_summary=False)
    on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
    log.info("embedding %d images with %s (%s weights, %s) on %s", len(rows), backbone.name, plan.source.kind,
             plan.data_config, torch.cuda.get_device_name() if on_gpu else "cpu")
    started = time.perf_counter()
    try:
        trainer.predict(EmbeddingModule(plan.model, backbone.normalize), datamodule=data, return_predictions=False)
        writer.close()
        if writer.written != len(rows):
            raise RuntimeError(f"wrote {writer.written} embeddings for {len(rows)} images")
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started

    meta = {"key": plan.key, "backbone": asdict(backbone),
            "model": plan.source.model, "timm_version": timm.__version__,
            "weights": {"kind": plan.source.kind, "identity": plan.source.identity,
                        "file": str(plan.source.file) if plan.source.file else None},
            "preprocessing": plan.data_config, "images": len(rows),
            "dim": int(np.load(partial, mmap_mode="r").shape[1]), "seconds": seconds,
            "images_per_second": len(rows) / seconds, "device": torch.cuda.get_device_name() if on_gpu else "cpu"}
    rows.assign(row=np.arange(len(rows))).to_parquet(out_dir / f".{ROWS_FILE}.partial")
    os.replace(out_dir / f".{ROWS_FILE}.partial", out_dir / ROWS_FILE)
    os.replace(partial, out_dir / EMBEDDINGS_FILE)
    (out_dir / f".{META_FILE}.partial").write_text(json.dumps(meta, indent=2, default=str))
    os.replace(out_dir / f".{META_FILE}.partial", out_dir / META_FILE)
    log.info("wrote %d x %d embeddings to %s in %.1f s (%.1f images/s)", len(rows), meta["dim"], out_dir, seconds,
             meta["images_per_second"])
    return load_features(out_dir)


def extract_features(table: pd.DataFrame, images_dir: Path, backbone: BackboneConfig, out_dir: Path, *,
                     exclude_classes: list[str] | None = None, reuse: bool = True,
                     progress: bool = True) -> FeatureSet:
    """Embed every selected image of ``table`` with ``backbone`` into a feature store in ``out_dir``.

    With ``reuse``, a complete store in ``out_dir`` with the same key is returned without recomputing anything.
    """
    plan = plan_extraction(table, backbone, exclude_classes)
    if reuse and stored_key(out_dir) == plan.key:
        log.info("features for %s (key %s) already in %s: reusing them", backbone.name, plan.key, out_dir)
        return load_features(out_dir)
    return run_extraction(plan, images_dir, out_dir, progress=progress)
