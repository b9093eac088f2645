"""Dimensionality reduction of embeddings (PCA), fitted once and saved with the features it produced."""

from ris.reduce.pca import FeatureReducer, fit_reducer

__all__ = ["FeatureReducer", "fit_reducer"]
