"""Deterministic locations of every pipeline output; dvc.yaml's ``outs`` name the same paths."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ris.config import Config, dim_label

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The Hydra config root (the repository's ``conf/``; ris runs from a checkout, as DVC pipelines do)."""


@dataclass(frozen=True)
class PipelinePaths:
    """Where each stage reads and writes, relative to the working directory."""

    cfg: Config

    @property
    def collection_dir(self) -> Path:
        return Path(self.cfg.data.root) / self.cfg.data.name

    @property
    def images_dir(self) -> Path:
        return self.collection_dir / "images"

    @property
    def image_table(self) -> Path:
        return self.collection_dir / "images.parquet"

    @property
    def split_table(self) -> Path:
        return self.collection_dir / "split.parquet"

    @property
    def features_dir(self) -> Path:
        return Path(self.cfg.paths.artifacts) / "features" / self.cfg.backbone.name

    @property
    def embedding_cache(self) -> Path:
        """Embeddings by image content hash, per backbone and extractor (not a DVC output: it outlives re-runs)."""
        return Path(self.cfg.paths.artifacts) / "cache" / "embeddings"

    def reduced_dir(self, dim: int | None) -> Path:
        return Path(self.cfg.paths.artifacts) / "reduced" / self.cfg.backbone.name / dim_label(dim)

    def index_dir(self, dim: int | None, index: str) -> Path:
        return Path(self.cfg.paths.artifacts) / "indexes" / self.cfg.backbone.name / dim_label(dim) / index

    @property
    def reports_dir(self) -> Path:
        return Path(self.cfg.paths.reports)

    @property
    def data_report(self) -> Path:
        return self.reports_dir / "data.json"

    @property
    def split_report(self) -> Path:
        return self.reports_dir / "split.json"

    @property
    def extract_report(self) -> Path:
        return self.reports_dir / "extract" / f"{self.cfg.backbone.name}.json"

    def metrics_file(self, dim: int | None, index: str) -> Path:
        return self.reports_dir / "metrics" / self.cfg.backbone.name / f"{dim_label(dim)}-{index}.json"


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; when the block succeeds it replaces ``final`` whole.

    A stage killed midway leaves the previous ``final`` (or none) and no half-written one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
