"""One evaluated variant (backbone x dimension x index): the pieces both `dvc repro` and `ris run` share."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ris.config import Config, ConfigError, IndexConfig, check_dim, parse_dim
from ris.evaluate import PROTOCOLS
from ris.index import index_class
from ris.index.base import NearestNeighbourIndex
from ris.paths import dim_label
from ris.tracking import flatten, git_commit, log_variant_run


@dataclass(frozen=True)
class Variant:
    """What one cell of the grid (or one Hydra job) evaluates."""

    backbone: str
    dim: int | None
    index: IndexConfig

    @property
    def name(self) -> str:
        return f"{self.backbone}/{dim_label(self.dim)}/{self.index.name}"


def grid_variant(cfg: Config, dim: str, index_name: str) -> Variant:
    """The grid cell ``(dim, index_name)``: settings from ``indexes.<index_name>``, dimension from ``dim``."""
    if index_name not in cfg.indexes:
        raise ConfigError(f"--index {index_name!r} is not a key of 'indexes'; known: {', '.join(cfg.indexes)}")
    return Variant(cfg.backbone.name, parse_dim(dim), cfg.indexes[index_name])


def single_variant(cfg: Config) -> Variant:
    """The variant a `ris run` job evaluates: ``reduce.dim`` and the selected ``index``."""
    return Variant(cfg.backbone.name, check_dim("reduce.dim", cfg.reduce.dim), cfg.index)


def build_index(vectors: np.ndarray, index_cfg: IndexConfig) -> tuple[NearestNeighbourIndex, float]:
    """Build the configured index over ``vectors``; return it and the build time in seconds."""
    started = time.perf_counter()
    index = index_class(index_cfg.name).build(np.ascontiguousarray(vectors, dtype=np.float32), index_cfg.metric,
                                              **index_cfg.params)
    return index, time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    """Total size of the files in ``folder`` (an index's footprint on disk)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def evaluate_variant(index: NearestNeighbourIndex, vectors: np.ndarray, labels: np.ndarray,
                     cfg: Config) -> dict[str, float]:
    """Run the configured protocol on ``index`` built over ``vectors``."""
    return PROTOCOLS[cfg.eval.protocol](index, vectors, labels, cfg.eval)


def track_variant(cfg: Config, variant: Variant, metrics: dict[str, float], *, source: str, features_key: str,
                  artifacts: list[Path] | None = None) -> str | None:
    """Log the variant as one MLflow run: its effective settings and feature-store key as params, what it is as
    tags (the same for `dvc repro` and `ris run`, so their runs compare side by side)."""
    params = flatten({"data": {"name": cfg.data.name, "exclude_classes": cfg.data.exclude_classes},
                      "backbone": asdict(cfg.backbone), "reduce": {**asdict(cfg.reduce), "dim": dim_label(variant.dim)},
                      "index": asdict(variant.index), "eval": asdict(cfg.eval)})
    params["features.key"] = features_key
    tags = {"backbone": variant.backbone, "dim": dim_label(variant.dim), "algorithm": variant.index.name,
            "protocol": cfg.eval.protocol, "git_commit": git_commit(), "source": source}
    return log_variant_run(cfg.tracking, variant.name, params, metrics, tags, artifacts)
