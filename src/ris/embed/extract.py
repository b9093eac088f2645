"""Extraction: image table + backbone config in, a memory-mappable feature store out."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch

from ris.artifacts import write_description
from ris.config import BackboneConfig
from ris.embed.cache import EmbeddingCache, copy_rows
from ris.embed.lightning import EmbeddingModule, ImageDataModule, predict_matrix, resolve_devices, scratch_folder
from ris.embed.preprocess import PREPROCESSING_VERSION, eval_transform
from ris.embed.pooling import pooled_backbone
from ris.embed.store import (
    EMBEDDINGS_FILE,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    ROWS_FILE,
    FeatureSet,
    load_features,
    stored_key,
)
from ris.embed.weights import WeightsSource, resolve_weights
from ris.images import DECODING_VERSION
from ris.locks import locked
from ris.paths import atomic_folder

log = logging.getLogger("ris.embed")


def select_rows(table: pd.DataFrame, exclude_classes: list[str]) -> pd.DataFrame:
    """The collection's images in a stable order: every class except the excluded ones, sorted by path."""
    kept = table[~table["class"].isin(exclude_classes)].sort_values("path").reset_index(drop=True)
    return kept[["path", "class", "sha256"]]


def extractor_key(backbone: BackboneConfig, source: WeightsSource, data_config: dict[str, Any]) -> str:
    """Identity of the function image -> embedding: model, weights, preprocessing, numeric precision, normalisation,
    and the code that computes it (ris's image decoding and preprocessing, timm's and torch's versions)."""
    identity = {"model": source.model, "weights": source.identity, "preprocessing": data_config,
                "precision": backbone.precision, "normalize": backbone.normalize, "decoding": DECODING_VERSION,
                "preprocessing_version": PREPROCESSING_VERSION,
                "timm": timm.__version__, "torch": torch.__version__}
    if backbone.pool is not None:  # only when set: the model's own pooling keeps the keys (and caches) it had
        identity["pool"] = {"kind": backbone.pool, **({"p": backbone.gem_p} if backbone.pool == "gem" else {})}
    # Batch size and memory layout are left out: they change float rounding only, like the machine does.
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def feature_key(extractor: str, rows: pd.DataFrame) -> str:
    """Identity of a feature matrix: the extractor and the exact images (paths, contents and classes, in order)."""
    listing = "\n".join(rows["path"] + "\t" + rows["sha256"] + "\t" + rows["class"])
    return hashlib.sha256(f"{extractor}\n{listing}".encode()).hexdigest()[:16]


@dataclass
class ExtractionPlan:
    """Everything decided before the first image is read: weights, model, preprocessing, images and their keys."""

    backbone: BackboneConfig
    source: WeightsSource
    model: torch.nn.Module
    data_config: dict[str, Any]
    rows: pd.DataFrame
    extractor_key: str
    key: str


def plan_extraction(table: pd.DataFrame, backbone: BackboneConfig,
                    exclude_classes: list[str] | None = None) -> ExtractionPlan:
    """Resolve weights, build the model and its eval preprocessing, select the images, compute the keys.

    Raises:
        WeightsUnavailableError: when pretrained weights cannot be had (before any image is read).
        ValueError: when no image is left after excluding classes.
    """
    source = resolve_weights(backbone)
    model = pooled_backbone(source, backbone.pool, backbone.gem_p)
    data_config = timm.data.resolve_model_data_config(model)  # the model's own eval preprocessing
    rows = select_rows(table, exclude_classes or [])
    if rows.empty:
        raise ValueError(f"no images to embed after excluding classes {exclude_classes}")
    extractor = extractor_key(backbone, source, data_config)
    return ExtractionPlan(backbone, source, model, data_config, rows, extractor, feature_key(extractor, rows))


def embed_images(plan: ExtractionPlan, paths: list[Path], *, progress: bool = True,
                 sha256: list[str] | None = None, into: Path | None = None) -> tuple[np.ndarray, str]:
    """Embed the image files ``paths`` in order under ``Trainer.predict``; return the matrix and the device name.

    With ``sha256``, each file read is checked against its catalogued hash. With ``into``, the matrix is written
    there and returned memory-mapped (the caller owns the file), so a million embeddings never sit in memory twice;
    without it, it is returned in memory.
    """
    backbone = plan.backbone
    data = ImageDataModule(paths, eval_transform(plan.data_config), backbone.batch_size, backbone.num_workers,
                           sha256=sha256)
    module = EmbeddingModule(plan.model, backbone.normalize, backbone.channels_last, plan.data_config["mean"],
                             plan.data_config["std"],
                             compile=backbone.compile and len(paths) >= backbone.compile_min_images)
    log.info("embedding %d images with %s (%s weights, %s) on %d %s process(es)", len(paths), backbone.name,
             plan.source.kind, plan.data_config, resolve_devices(backbone.devices, backbone.accelerator),
             backbone.accelerator)
    with tempfile.TemporaryDirectory(prefix="ris-embed-") as scratch:
        path = into or Path(scratch) / EMBEDDINGS_FILE
        device = predict_matrix(module, data, path, accelerator=backbone.accelerator, devices=backbone.devices,
                                strategy=backbone.strategy, precision=backbone.precision, progress=progress,
                                what=f"extract {backbone.name}")
        matrix = np.load(path, mmap_mode="r")
        return (matrix if into is not None else np.array(matrix)), device


def run_extraction(plan: ExtractionPlan, images_dir: Path, out_dir: Path, *, cache_dir: Path | None = None,
                   progress: bool = True) -> FeatureSet:
    """Write the feature store for ``plan.rows`` into ``out_dir``, embedding only images ``cache_dir`` lacks.

    ``images_dir`` is the folder the rows' paths are relative to (:func:`ris.data.catalog.image_root`). Writes
    ``embeddings.npy`` (float32, one row per image), ``rows.parquet`` (row-aligned) and ``meta.json`` (keys,
    weights, preprocessing) into a staging folder that replaces ``out_dir`` whole at the end, so an
    interrupted run leaves no partial store. Newly embedded images are added to the cache. Embeddings move between
    memory-mapped files in bounded chunks: memory does not grow with the collection.
    """
    rows = plan.rows
    hashes = rows["sha256"].tolist()
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    found, cache_rows = cache.find(hashes) if cache is not None else (np.zeros(len(rows), bool), None)
    # Held open: a memory map stays readable after :meth:`EmbeddingCache.add` replaces the cache's files.
    cached = cache.matrix if cache is not None else None
    missing = np.flatnonzero(~found)
    # Identical files (same content hash) are embedded once: the first row of each new hash.
    first_of_hash: dict[str, int] = {}
    for row in missing:
        first_of_hash.setdefault(hashes[row], int(row))
    log.info("%d of %d images already embedded by this extractor; embedding %d", int(found.sum()), len(rows),
             len(first_of_hash))
    started = time.perf_counter()
    device = "cpu"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Under torchrun or srun every rank embeds its share into this folder, so it sits beside the store (storage all
    # machines see), named alike on every rank; alone, it is a private temporary folder.
    with scratch_folder("ris-embed-", beside=out_dir.parent) as scratch:
        unique = None
        if first_of_hash:
            with locked(images_dir.parent, exclusive=False):  # the collection's lock: its images stay while read
                relative = rows["path"].to_numpy()
                unique, device = embed_images(plan, [images_dir / relative[row] for row in first_of_hash.values()],
                                              progress=progress, sha256=list(first_of_hash),
                                              into=Path(scratch) / EMBEDDINGS_FILE)
        seconds = time.perf_counter() - started
        dim = unique.shape[1] if unique is not None else cached.shape[1]
        if cache is not None and unique is not None:
            cache.add(list(first_of_hash), unique)

        with atomic_folder(out_dir) as staging:
            matrix = np.lib.format.open_memmap(staging / EMBEDDINGS_FILE, mode="w+", dtype=np.float32,
                                               shape=(len(rows), dim))
            if found.any():
                copy_rows(cached, cache_rows, matrix, np.flatnonzero(found))
            if len(missing):
                position = {digest: index for index, digest in enumerate(first_of_hash)}
                copy_rows(unique, np.array([position[hashes[row]] for row in missing]), matrix, missing)
            matrix.flush()
            del matrix, unique, cached
            rows.assign(row=np.arange(len(rows))).to_parquet(staging / ROWS_FILE)
            write_description(staging / META_FILE, FORMAT, FORMAT_VERSION, {
                "key": plan.key, "extractor_key": plan.extractor_key,
                "backbone": {name: value for name, value in asdict(plan.backbone).items()
                             if name not in ("weights_file", "weights_dir")},  # where weights live is not what they are
                "model": plan.source.model, "timm_version": timm.__version__,
                # The weights file's name only: its content hash is the identity, and where the file lives on this
                # machine must not make the same features describe themselves differently elsewhere.
                "weights": {"kind": plan.source.kind, "identity": plan.source.identity,
                            "file_name": plan.source.file.name if plan.source.file else None},
                "preprocessing": plan.data_config, "images": len(rows), "dim": int(dim)})
    log.info("wrote %d x %d embeddings to %s (%d embedded in %.1f s, %d reused)", len(rows), dim, out_dir,
             len(first_of_hash), seconds, int(found.sum()))
    features = load_features(out_dir, expect_key=plan.key)
    features.run = {"embedded": len(first_of_hash), "reused": int(found.sum()), "seconds": seconds,
                    "device": device, "images_per_second": len(first_of_hash) / seconds if first_of_hash else None}
    return features


def extract_features(table: pd.DataFrame, images_dir: Path, backbone: BackboneConfig, out_dir: Path, *,
                     exclude_classes: list[str] | None = None, cache_root: Path | None = None, reuse: bool = True,
                     progress: bool = True) -> FeatureSet:
    """Embed every selected image of ``table`` with ``backbone`` into a feature store in ``out_dir``.

    With ``reuse``, a complete store in ``out_dir`` with the same key is returned without recomputing anything.
    With ``cache_root``, embeddings are looked up by image content hash in the extractor's cache under it, and
    only images never embedded before are computed.
    """
    plan = plan_extraction(table, backbone, exclude_classes)
    if reuse and stored_key(out_dir) == plan.key:
        log.info("features for %s (key %s) already in %s: reusing them", backbone.name, plan.key, out_dir)
        features = load_features(out_dir, expect_key=plan.key)
        features.run = {"embedded": 0, "reused": len(features.rows), "seconds": 0.0, "device": None,
                        "images_per_second": None}
        return features
    cache_dir = cache_root / backbone.name / plan.extractor_key if cache_root is not None else None
    return run_extraction(plan, images_dir, out_dir, cache_dir=cache_dir, progress=progress)
