"""PCA to a target dimension, or the identity when the full embedding is kept; optionally L2-normalised after."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

MODEL_FILE = "reducer.npz"
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
        """Project ``features`` (rows) to ``output_dim`` as float32."""
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


def fit_reducer(features: np.ndarray, dim: int | None, *, method: str = "pca", whiten: bool = False,
                renormalize: bool = False) -> FeatureReducer:
    """Fit a reduction of ``features`` to ``dim`` components (``None`` keeps them all, unprojected).

    Raises:
        ValueError: if ``dim`` exceeds what PCA can give (the feature width or the number of rows).
    """
    input_dim = features.shape[1]
    if dim is None or (dim == input_dim and not whiten):
        return FeatureReducer(input_dim, input_dim, renormalize=renormalize)
    limit = min(features.shape)
    if dim > limit:
        raise ValueError(f"cannot reduce to {dim} dimensions: PCA gives at most min(rows, features) = {limit}")
    pca = PCA(n_components=dim, svd_solver="full")  # exact SVD: deterministic, no seed needed
    pca.fit(np.asarray(features, dtype=np.float32))
    variances = pca.explained_variance_.astype(np.float32)
    return FeatureReducer(input_dim, dim, pca.mean_.astype(np.float32), pca.components_.astype(np.float32),
                          np.sqrt(variances) if whiten else None, pca.explained_variance_ratio_.astype(np.float64),
                          variances, renormalize)
