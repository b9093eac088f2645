"""The reference exact search the index tests compare every family against."""

from __future__ import annotations

import numpy as np


def naive_search(gallery: np.ndarray, queries: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 distance matrix, every row argsorted: every gallery id and distance, nearest first."""
    gallery, queries = gallery.astype(np.float64), queries.astype(np.float64)
    if metric == "angular":
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    full = np.linalg.norm(queries[:, None, :] - gallery[None, :, :], axis=2)
    order = np.argsort(full, axis=1)
    return order, np.take_along_axis(full, order, axis=1)
