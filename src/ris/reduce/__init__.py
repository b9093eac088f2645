"""Dimensionality reduction of embeddings (PCA), fitted once and stored with the vectors it produced."""

from ris.reduce.pca import FeatureReducer, fit_reducer
from ris.reduce.store import ReducedStore

__all__ = ["FeatureReducer", "ReducedStore", "fit_reducer"]
