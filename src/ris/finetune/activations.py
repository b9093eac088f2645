"""Activations entering the backbone's last blocks, computed once per collection and reused by every fine-tune.

With ``finetune.depth=blocks`` and ``inputs=cached``, training runs only the last blocks: what the frozen trunk
computes for each image (under the backbone's eval preprocessing) is stored here, float16, memory-mapped, keyed by
the feature store's key (model, weights, preprocessing, images) and the module the tail starts at. The store sits in
the artifact cache (beside the embedding cache, not a DVC output), so a second fine-tune recipe reads it again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ris.artifacts import REBUILD, ArtifactError, read_description, write_description
from ris.embed.extract import ExtractionPlan
from ris.embed.lightning import EmbeddingModule, ImageDataModule, predict_matrix
from ris.embed.preprocess import eval_transform
from ris.locks import locked
from ris.paths import atomic_folder

log = logging.getLogger("ris.finetune")

ACTIVATIONS_FILE = "activations.npy"
META_FILE = "meta.json"
FORMAT = "ris.activations"
FORMAT_VERSION = 1


def activations_key(features_key: str, tail_from: str) -> str:
    """Identity of a store: the features' (extractor and images) and where the trunk ends."""
    return hashlib.sha256(f"{features_key}\t{tail_from}".encode()).hexdigest()[:16]


@dataclass
class ActivationStore:
    """Row-aligned trunk outputs (rows x channels x height x width, float16, memory-mapped) for a feature store."""

    activations: np.ndarray
    meta: dict

    @classmethod
    def load(cls, folder: Path, expect_key: str, remedy: str = REBUILD) -> ActivationStore:
        """Open a store, checked against its description and the key it must have.

        Raises:
            ArtifactError: missing, damaged, or made for other features or another trunk.
        """
        with locked(folder, exclusive=False):
            meta = read_description(folder / META_FILE, FORMAT, FORMAT_VERSION, remedy)
            if meta["key"] != expect_key:
                raise ArtifactError(f"{folder} holds activations {meta['key']}, expected {expect_key}: {remedy}")
            try:
                activations = np.load(folder / ACTIVATIONS_FILE, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise ArtifactError(f"{folder / ACTIVATIONS_FILE} is unreadable ({error}): {remedy}") from error
        if list(activations.shape) != meta["shape"]:
            raise ArtifactError(f"{folder}: activations {activations.shape} do not match the description "
                                f"{meta['shape']}: {remedy}")
        return cls(activations, meta)


def cached_activations(plan: ExtractionPlan, trunk: nn.Module, tail_from: str, images_dir: Path, cache_root: Path,
                       *, progress: bool = True) -> ActivationStore:
    """The trunk's output for every row of ``plan`` (the feature store's rows, in order): from the cache under
    ``cache_root`` when it holds them, else computed under ``Trainer.predict`` and stored there first."""
    key = activations_key(plan.key, tail_from)
    folder = cache_root / plan.backbone.name / key
    try:
        return ActivationStore.load(folder, key)
    except ArtifactError:
        pass
    backbone = plan.backbone
    transform = eval_transform(plan.data_config, scaled=True)
    paths = [images_dir / path for path in plan.rows["path"]]
    data = ImageDataModule(paths, transform, backbone.batch_size, backbone.num_workers,
                           sha256=plan.rows["sha256"].tolist())
    started = time.perf_counter()
    with atomic_folder(folder) as staging:
        log.info("computing %s's activations before %s for %d images, once", backbone.name, tail_from, len(paths))
        with locked(images_dir.parent, exclusive=False):
            predict_matrix(EmbeddingModule(trunk, normalize=False), data, staging / ACTIVATIONS_FILE,
                           accelerator=backbone.accelerator, devices=backbone.devices, strategy=backbone.strategy,
                           precision=backbone.precision, progress=progress, dtype=np.float16,
                           what=f"activations of {backbone.name}")
        shape = list(np.load(staging / ACTIVATIONS_FILE, mmap_mode="r").shape)
        write_description(staging / META_FILE, FORMAT, FORMAT_VERSION, {
            "key": key, "features_key": plan.key, "model": plan.source.model, "tail_from": tail_from,
            "shape": shape, "dtype": "float16"})
    log.info("activations %s computed in %.1f s", shape, time.perf_counter() - started)
    return ActivationStore.load(folder, key)
