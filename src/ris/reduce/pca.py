"""PCA to a target dimension, or the identity when the full embedding is kept."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

MODEL_FILE = "reducer.pkl"
SUMMARY_FILE = "reducer.json"


@dataclass
class FeatureReducer:
    """A fitted reduction: ``pca`` is None when the full embedding is kept."""

    input_dim: int
    output_dim: int
    pca: PCA | None = None

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Project ``features`` (rows) to ``output_dim`` as float32."""
        if self.pca is None:
            return np.asarray(features, dtype=np.float32)
        return self.pca.transform(features).astype(np.float32)

    @property
    def explained_variance(self) -> float:
        """Share of the variance the kept components explain (1.0 for the identity)."""
        return 1.0 if self.pca is None else float(self.pca.explained_variance_ratio_.sum())

    def save(self, folder: Path) -> None:
        """Write the fitted model (pickle) and a readable summary (JSON)."""
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / MODEL_FILE, "wb") as handle:
            pickle.dump(self, handle)
        summary = {"input_dim": self.input_dim, "output_dim": self.output_dim,
                   "method": "none" if self.pca is None else "pca", "explained_variance": self.explained_variance}
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))

    @staticmethod
    def load(folder: Path) -> FeatureReducer:
        """Read a reducer written by :meth:`save` (a pickle: load only files this pipeline wrote)."""
        with open(folder / MODEL_FILE, "rb") as handle:
            return pickle.load(handle)


def fit_reducer(features: np.ndarray, dim: int | None, *, method: str = "pca", whiten: bool = False) -> FeatureReducer:
    """Fit a reduction of ``features`` to ``dim`` components (``None`` or ``method='none'`` keeps them all).

    Raises:
        ValueError: if ``dim`` exceeds what PCA can give (the feature width or the number of rows).
    """
    input_dim = features.shape[1]
    if method == "none" or dim is None or dim == input_dim:
        return FeatureReducer(input_dim, input_dim)
    limit = min(features.shape)
    if dim > limit:
        raise ValueError(f"cannot reduce to {dim} dimensions: PCA gives at most min(rows, features) = {limit}")
    pca = PCA(n_components=dim, whiten=whiten, svd_solver="full")  # exact SVD: deterministic, no seed needed
    pca.fit(np.asarray(features, dtype=np.float32))
    return FeatureReducer(input_dim, dim, pca)
