"""PCA to a target dimension, or the identity when the full embedding is kept; optionally L2-normalised after."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

MODEL_FILE = "reducer.npz"
TRANSFORM_ROWS = 65_536
"""Rows projected at a time (64k rows of 1280 float32 is 335 MB of scratch)."""
ARRAYS = ("mean", "components", "scale", "explained_variance_ratio", "variances")


@dataclass
class FeatureReducer:
    """A fitted projection ``(x - mean) @ components.T``, divided by ``scale`` when whitened, then scaled to unit
    length when ``renormalize`` (centring and dropping components leave unit embeddings of unequal length).

    ``components`` is None for the identity (the full embedding is kept). Plain arrays, saved as ``.npz``: loading
    executes nothing, unlike a pickle.
    """

    input_dim: int
    output_dim: int
    mean: np.ndarray | None = None
    components: np.ndarray | None = None
    scale: np.ndarray | None = None  # sqrt of each component's variance, when whitening
    explained_variance_ratio: np.ndarray | None = None
    variances: np.ndarray | None = None  # each component's variance (what whitening divides by)
    renormalize: bool = False

    @property
    def method(self) -> str:
        return "none" if self.components is None else "pca"

    @property
    def whiten(self) -> bool:
        return self.scale is not None

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Project ``features`` (rows) to ``output_dim`` as float32.

        More than :data:`TRANSFORM_ROWS` rows are projected a block at a time into the result, so a memory-mapped
        collection is never held whole at its input width (only the result, at ``output_dim``).
        """
        identity = self.components is None and not self.renormalize  # returns ``features`` as is, uncopied
        if features.ndim == 2 and len(features) > TRANSFORM_ROWS and not identity:
            result = np.empty((len(features), self.output_dim), dtype=np.float32)
            for start in range(0, len(features), TRANSFORM_ROWS):
                result[start:start + TRANSFORM_ROWS] = self._transform(features[start:start + TRANSFORM_ROWS])
            return result
        return self._transform(features)

    def _transform(self, features: np.ndarray) -> np.ndarray:
        projected = np.asarray(features, dtype=np.float32)
        if self.components is not None:
            projected = (projected - self.mean) @ self.components.T
            if self.scale is not None:
                projected /= self.scale
        if self.renormalize:
            projected = projected / np.maximum(np.linalg.norm(projected, axis=-1, keepdims=True), 1e-12)
        return np.ascontiguousarray(projected, dtype=np.float32)

    def truncated(self, dim: int, *, whiten: bool, renormalize: bool) -> FeatureReducer:
        """The reduction to this PCA's first ``dim`` components, whitened and renormalised as asked.

        PCA's components are nested, so this equals a fit to ``dim`` (one fit serves a whole sweep).
        """
        if self.components is None or self.variances is None or self.explained_variance_ratio is None:
            raise ValueError("only a fitted PCA can be truncated")
        if dim > self.output_dim:
            raise ValueError(f"cannot truncate {self.output_dim} components to {dim}")
        scale = np.sqrt(self.variances[:dim]).astype(np.float32) if whiten else None
        return FeatureReducer(self.input_dim, dim, self.mean, self.components[:dim], scale,
                              self.explained_variance_ratio[:dim], self.variances[:dim], renormalize)

    @property
    def explained_variance(self) -> float:
        """Share of the variance the kept components explain (1.0 for the identity)."""
        return 1.0 if self.explained_variance_ratio is None else float(self.explained_variance_ratio.sum())

    def save(self, folder: Path) -> None:
        """Write the fitted arrays to ``folder/reducer.npz``."""
        arrays = {name: getattr(self, name) for name in ARRAYS if getattr(self, name) is not None}
        np.savez(folder / MODEL_FILE, input_dim=self.input_dim, output_dim=self.output_dim,
                 renormalize=self.renormalize, **arrays)

    @classmethod
    def load(cls, folder: Path) -> FeatureReducer:
        """Read what :meth:`save` wrote, and check the arrays agree with the dimensions."""
        with np.load(folder / MODEL_FILE, allow_pickle=False) as saved:
            arrays = {name: saved[name] if name in saved else None for name in ARRAYS}
            reducer = cls(int(saved["input_dim"]), int(saved["output_dim"]), **arrays,
                          renormalize=bool(saved["renormalize"]))
        if reducer.components is not None and reducer.components.shape != (reducer.output_dim, reducer.input_dim):
            raise ValueError(f"components are {reducer.components.shape}, expected "
                             f"({reducer.output_dim}, {reducer.input_dim})")
        return reducer


EXACT_SVD_ROWS = 20_000
"""Fits on up to this many rows use the exact SVD (``svd_solver="full"``), as they always have; larger ones use a
solver whose cost does not grow with rows times features squared in memory (:func:`pca_solver`)."""
EIGH_MAX_FEATURES = 4096
"""Up to this width, a large fit eigendecomposes the covariance (features x features: 64 MB at 4096)."""


def pca_solver(rows: int, features: int) -> str:
    """The scikit-learn ``svd_solver`` for a fit on ``rows`` x ``features``.

    Up to :data:`EXACT_SVD_ROWS` rows: ``full`` (exact SVD). Above, for embeddings up to
    :data:`EIGH_MAX_FEATURES` wide: ``covariance_eigh`` (one pass over the rows to form the covariance, then its
    exact eigendecomposition; no seed needed). On this project's embeddings it agrees with the exact SVD and is
    several times faster than both it and the randomized solver, which also got the trailing components of a
    512-component fit wrong (README, "A million images"; ``python -m ris.scale`` measures all three). Wider
    features use ``randomized`` (seeded), for which forming the covariance would cost more than the fit.
    """
    if rows <= EXACT_SVD_ROWS:
        return "full"
    return "covariance_eigh" if features <= EIGH_MAX_FEATURES else "randomized"


def sample_rows(rows: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """``rows`` itself when ``size`` is None or not smaller; else a seeded sample of ``size`` of them, in order.

    Sorted, so a memory-mapped matrix is read front to back.
    """
    if size is None or size >= len(rows):
        return rows
    chosen = np.random.default_rng(seed).choice(len(rows), size=size, replace=False)
    return rows[np.sort(chosen)]


def fit_reducer(features: np.ndarray, dim: int | None, *, method: str = "pca", whiten: bool = False,
                renormalize: bool = False, seed: int = 0) -> FeatureReducer:
    """Fit a reduction of ``features`` to ``dim`` components (``None`` keeps them all, unprojected).

    The solver is :func:`pca_solver`'s for the shape of ``features``; ``seed`` seeds the randomized one.

    Raises:
        ValueError: if ``dim`` exceeds what PCA can give (the feature width or the number of rows).
    """
    input_dim = features.shape[1]
    if dim is None or (dim == input_dim and not whiten):
        return FeatureReducer(input_dim, input_dim, renormalize=renormalize)
    limit = min(features.shape)
    if dim > limit:
        raise ValueError(f"cannot reduce to {dim} dimensions: PCA gives at most min(rows, features) = {limit}")
    solver = pca_solver(*features.shape)
    pca = PCA(n_components=dim, svd_solver=solver, random_state=seed if solver == "randomized" else None)
    pca.fit(np.asarray(features, dtype=np.float32))
    variances = pca.explained_variance_.astype(np.float32)
    return FeatureReducer(input_dim, dim, pca.mean_.astype(np.float32), pca.components_.astype(np.float32),
                          np.sqrt(variances) if whiten else None, pca.explained_variance_ratio_.astype(np.float64),
                          variances, renormalize)
