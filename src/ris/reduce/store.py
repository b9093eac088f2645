"""The reduced-feature store: a fitted reducer and the collection's reduced vectors, with what they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ris.artifacts import REBUILD, ArtifactError, check_built_from, read_description, write_description
from ris.config import ConfigError, ReduceConfig, dim_label
from ris.embed.store import FeatureSet
from ris.locks import locked
from ris.reduce.pca import FeatureReducer, fit_reducer, pca_solver, sample_rows

VECTORS_FILE = "vectors.npy"
DESCRIPTION_FILE = "reduced.json"
FORMAT = "ris.reduced"
FORMAT_VERSION = 2  # 2: renormalize, and the component variances


@dataclass
class ReducedStore:
    """``vectors`` are the feature store's rows, in order, after ``reducer`` (fitted on the split's train and val
    rows, or a seeded sample of them); ``built_from`` names those features (backbone, feature-store key, dimension
    label)."""

    reducer: FeatureReducer
    vectors: np.ndarray
    built_from: dict[str, Any]
    fitted_rows: int | None = None  # how many (train and val) rows the reducer was fitted on
    fit_info: dict[str, Any] = field(default_factory=dict)  # the fit sample: rows, of how many, seed, solver

    @classmethod
    def fit(cls, features: FeatureSet, dim: int | None, cfg: ReduceConfig, splits: np.ndarray,
            label: str | None = None) -> ReducedStore:
        """Fit the configured reduction to ``dim`` on the collection's train and val embeddings, and reduce all.

        The test images of the split never shape the projection, so the ``heldout`` protocol's queries are unseen
        by every fitted step, PCA included. More train and val rows than ``cfg.fit_sample`` are sampled (seeded by
        ``cfg.seed``); only the sample is read into memory.

        Raises:
            ConfigError: ``dim`` is more than PCA can give.
        """
        candidates = np.flatnonzero(splits != "test")
        fit_rows = sample_rows(candidates, cfg.fit_sample, cfg.seed)
        # The full embedding fits nothing: its rows are not read (only the sample is, for a PCA).
        fitted = features.embeddings if dim is None else features.embeddings[fit_rows]
        try:
            reducer = fit_reducer(fitted, dim, method=cfg.method, whiten=cfg.whiten, renormalize=cfg.renormalize,
                                  seed=cfg.seed)
        except ValueError as error:
            raise ConfigError(f"config key 'grid.dims' holds {dim}: {error}") from error
        # The grid's name for the dimension: ``auto`` stays ``auto`` whatever the sweep chose.
        built_from = {"backbone": features.meta["backbone"]["name"], "features_key": features.key,
                      "dim": label or dim_label(dim)}
        return cls(reducer, reducer.transform(features.embeddings), built_from, fitted_rows=len(fit_rows),
                   fit_info=fit_description(len(fit_rows), len(candidates), cfg, reducer))

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
            **({"fit": self.fit_info} if self.fit_info else {}), "built_from": self.built_from})

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
        return cls(reducer, matrix, description["built_from"], description["fitted_rows"], description.get("fit", {}))


def fit_description(rows: int, candidates: int, cfg: ReduceConfig, reducer: FeatureReducer) -> dict[str, Any]:
    """What a store records of its fit: ``rows`` sampled of ``candidates`` train+val rows, the sample setting and
    seed, and the solver (None when nothing was fitted: the full embedding kept)."""
    solver = pca_solver(rows, reducer.input_dim) if reducer.components is not None else None
    return {"rows": rows, "of": candidates, "sample": cfg.fit_sample, "seed": cfg.seed, "solver": solver}
