"""The reduced-feature store: a fitted reducer and the collection's reduced vectors, with what they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ris.artifacts import REBUILD, ArtifactError, check_built_from, read_description, write_description
from ris.config import ConfigError, ReduceConfig, dim_label
from ris.embed.store import FeatureSet
from ris.locks import locked
from ris.reduce.pca import FeatureReducer, fit_reducer

VECTORS_FILE = "vectors.npy"
DESCRIPTION_FILE = "reduced.json"
FORMAT = "ris.reduced"
FORMAT_VERSION = 2  # 2: renormalize, and the component variances


@dataclass
class ReducedStore:
    """``vectors`` are the feature store's rows, in order, after ``reducer`` (fitted on the split's train and val
    rows); ``built_from`` names those features (backbone, feature-store key, dimension label)."""

    reducer: FeatureReducer
    vectors: np.ndarray
    built_from: dict[str, Any]
    fitted_rows: int | None = None  # how many (train and val) rows the reducer was fitted on

    @classmethod
    def fit(cls, features: FeatureSet, dim: int | None, cfg: ReduceConfig, splits: np.ndarray,
            label: str | None = None) -> ReducedStore:
        """Fit the configured reduction to ``dim`` on the collection's train and val embeddings, and reduce all.

        The test images of the split never shape the projection, so the ``heldout`` protocol's queries are unseen
        by every fitted step, PCA included.

        Raises:
            ConfigError: ``dim`` is more than PCA can give.
        """
        fit_rows = np.flatnonzero(splits != "test")
        try:
            reducer = fit_reducer(features.embeddings[fit_rows], dim, method=cfg.method, whiten=cfg.whiten,
                                  renormalize=cfg.renormalize)
        except ValueError as error:
            raise ConfigError(f"config key 'grid.dims' holds {dim}: {error}") from error
        # The grid's name for the dimension: ``auto`` stays ``auto`` whatever the sweep chose.
        built_from = {"backbone": features.meta["backbone"]["name"], "features_key": features.key,
                      "dim": label or dim_label(dim)}
        return cls(reducer, reducer.transform(features.embeddings), built_from, fitted_rows=len(fit_rows))

    def save(self, folder: Path) -> None:
        """Write the reducer, the vectors and ``reduced.json`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.reducer.save(folder)
        np.save(folder / VECTORS_FILE, np.ascontiguousarray(self.vectors, dtype=np.float32))
        write_description(folder / DESCRIPTION_FILE, FORMAT, FORMAT_VERSION, {
            "method": self.reducer.method, "input_dim": self.reducer.input_dim,
            "output_dim": self.reducer.output_dim, "whiten": self.reducer.whiten,
            "renormalize": self.reducer.renormalize,
            "explained_variance": self.reducer.explained_variance, "rows": int(len(self.vectors)),
            "fitted_on": "train+val", "fitted_rows": self.fitted_rows,
            "built_from": self.built_from})

    @classmethod
    def load(cls, folder: Path, expect: dict[str, Any] | None = None, *, vectors: bool = True,
             remedy: str = REBUILD) -> ReducedStore:
        """Open the store in ``folder`` (vectors memory-mapped; ``vectors=False`` skips them, as search does).

        Raises:
            ArtifactError: missing, another format, built from other features than ``expect``, or damaged.
        """
        with locked(folder, exclusive=False):  # never half of one version and half of the next
            return cls._load(folder, expect, vectors, remedy)

    @classmethod
    def _load(cls, folder: Path, expect: dict[str, Any] | None, vectors: bool, remedy: str) -> ReducedStore:
        path = folder / DESCRIPTION_FILE
        description = read_description(path, FORMAT, FORMAT_VERSION, remedy)
        check_built_from(path, description, expect, remedy)
        try:
            reducer = FeatureReducer.load(folder)
            matrix = np.load(folder / VECTORS_FILE, mmap_mode="r") if vectors else np.empty((0, reducer.output_dim))
        except (OSError, ValueError, KeyError) as error:
            raise ArtifactError(f"{folder}: cannot read the reducer or vectors ({error}): {remedy}") from error
        expected_shape = (description["rows"], description["output_dim"])
        if reducer.output_dim != description["output_dim"] or (vectors and matrix.shape != expected_shape):
            raise ArtifactError(f"{folder}: vectors are {matrix.shape} and the reducer gives {reducer.output_dim} "
                                f"dimensions; its description says {expected_shape}: {remedy}")
        return cls(reducer, matrix, description["built_from"], description["fitted_rows"])
