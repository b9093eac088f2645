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

from ris.config import Config, ConfigError, Dim, dim_label
from ris.locks import locked

CONF_DIR_ENV = "RIS_CONF_DIR"


def conf_dir() -> Path:
    """The Hydra config root: env RIS_CONF_DIR, else ``conf/`` in the working directory.

    Like `dvc repro`, ris runs in a checkout: a second clone, a git worktree or a `dvc exp run --temp` workspace
    uses its own ``conf/``, never the one of the checkout the package happens to be installed from.

    Raises:
        ConfigError: no ``config.yaml`` there.
    """
    folder = Path(os.environ.get(CONF_DIR_ENV) or "conf").resolve()
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"{folder / 'config.yaml'} not found: run ris in a ris checkout (the folder with "
                          f"dvc.yaml and conf/), or point env {CONF_DIR_ENV} at a config folder")
    return folder


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
    def feature_cache(self) -> Path:
        """Feature stores `ris run` makes for keys other than the DVC stage's, one folder per key."""
        return Path(self.cfg.paths.artifacts) / "cache" / "features" / self.cfg.backbone.name

    @property
    def embedding_cache(self) -> Path:
        """Embeddings by image content hash, per backbone and extractor (not a DVC output: it outlives re-runs)."""
        return Path(self.cfg.paths.artifacts) / "cache" / "embeddings"

    def reduced_dir(self, dim: Dim) -> Path:
        return Path(self.cfg.paths.artifacts) / "reduced" / self.cfg.backbone.name / dim_label(dim)

    def index_dir(self, dim: Dim, index: str) -> Path:
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

    @property
    def pca_dir(self) -> Path:
        return self.reports_dir / "pca" / self.cfg.backbone.name

    @property
    def pca_sweep_table(self) -> Path:
        return self.pca_dir / "sweep.csv"

    @property
    def pca_choice(self) -> Path:
        return self.pca_dir / "choice.json"

    @property
    def pca_plots(self) -> Path:
        return self.pca_dir / "plots"

    def metrics_file(self, dim: Dim, index: str) -> Path:
        return self.reports_dir / "metrics" / self.cfg.backbone.name / f"{dim_label(dim)}-{index}.json"

    @property
    def activation_cache(self) -> Path:
        """Activations entering the backbone's last blocks, per backbone and key (computed once, not a DVC output)."""
        return Path(self.cfg.paths.artifacts) / "cache" / "activations"

    def finetuned_dir(self, training: str) -> Path:
        """A fine-tune's outputs: ``model`` (the fine-tuned model), ``features`` (the collection embedded by it)
        and ``index`` (the ``search.index`` entry built over them)."""
        return Path(self.cfg.paths.artifacts) / "finetuned" / self.cfg.backbone.name / training

    @property
    def finetune_reports(self) -> Path:
        return self.reports_dir / "finetune" / self.cfg.backbone.name

    def finetune_training_report(self, training: str) -> Path:
        return self.finetune_reports / "trainings" / f"{training}.json"

    def finetune_history(self, training: str) -> Path:
        return self.finetune_reports / "trainings" / f"{training}-history.csv"


def remove_abandoned_staging(final: Path) -> None:
    """Delete the staging folders of ``final`` whose process is gone (killed midway); live ones are left alone."""
    for staging in final.parent.glob(f".{final.name}.*.partial"):
        owner = staging.name.removeprefix(f".{final.name}.").split(".")[0]
        if owner.isdigit() and not _process_alive(int(owner)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; when the block succeeds it replaces ``final`` whole.

    A stage killed midway leaves the previous ``final`` (or none) and no half-written one. The swap holds
    ``final``'s exclusive lock, so a process loading it (under the shared lock) sees the old or the new version.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    with locked(final, exclusive=True):  # waits for readers of the old version (they load under a shared lock)
        trash = None
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, trash)  # a rename, so the swap is two renames: never a half-deleted final
        os.replace(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
