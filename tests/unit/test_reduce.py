"""Feature reduction: the identity when the full embedding is kept, PCA otherwise, and its persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from ris.reduce import FeatureReducer, fit_reducer


def _features(rows: int = 60, cols: int = 20, seed: int = 0) -> np.ndarray:
    """Correlated features with a decaying spectrum, so a few components carry most of the variance."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, cols)) * np.linspace(5.0, 0.1, cols)) @ rng.normal(size=(cols, cols))


@pytest.mark.parametrize("dim, method", [(None, "pca"), (5, "none"), (20, "pca")])
def test_identity(dim: int | None, method: str) -> None:
    """No dimension, method 'none', or the full width keeps the features unchanged (as float32)."""
    features = _features()
    reducer = fit_reducer(features, dim, method=method)
    assert reducer.pca is None
    assert reducer.input_dim == reducer.output_dim == 20
    assert reducer.explained_variance == 1.0
    reduced = reducer.transform(features)
    assert reduced.dtype == np.float32
    np.testing.assert_array_equal(reduced, features.astype(np.float32))


def test_pca_shape_dtype_and_variance() -> None:
    """PCA keeps ``dim`` columns as float32 and reports sklearn's explained-variance share."""
    features = _features()
    reducer = fit_reducer(features, 5)
    reduced = reducer.transform(features)
    assert (reducer.input_dim, reducer.output_dim) == (20, 5)
    assert reduced.shape == (60, 5) and reduced.dtype == np.float32

    reference = PCA(n_components=5, svd_solver="full").fit(features.astype(np.float32))
    assert 0.0 < reducer.explained_variance <= 1.0
    assert reducer.explained_variance == pytest.approx(float(reference.explained_variance_ratio_.sum()), rel=1e-5)
    assert 0.5 < reducer.explained_variance < 1.0  # 5 of 20 components hold most, not all, of the variance
    np.testing.assert_allclose(reduced, reference.transform(features), rtol=1e-4, atol=1e-4)


def test_pca_components_are_uncorrelated() -> None:
    """The projected training features are centred with a diagonal covariance, variances largest first."""
    reduced = fit_reducer(_features(), 4).transform(_features()).astype(np.float64)
    np.testing.assert_allclose(reduced.mean(axis=0), 0.0, atol=1e-3)
    covariance = np.cov(reduced, rowvar=False)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() < 1e-3 * np.diag(covariance).max()
    assert np.all(np.diff(np.diag(covariance)) < 0)


def test_whiten_gives_unit_variance() -> None:
    """``whiten=True`` scales every kept component to unit variance."""
    features = _features()
    reduced = fit_reducer(features, 4, whiten=True).transform(features)
    np.testing.assert_allclose(reduced.var(axis=0, ddof=1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("dim", [None, 6])
def test_save_load_round_trip(tmp_path: Path, dim: int | None) -> None:
    """A saved reducer transforms new features exactly as the fitted one; the JSON summary describes it."""
    features, new = _features(), _features(seed=1)
    reducer = fit_reducer(features, dim)
    reducer.save(tmp_path / "reducer")
    loaded = FeatureReducer.load(tmp_path / "reducer")
    np.testing.assert_array_equal(loaded.transform(new), reducer.transform(new))
    assert (loaded.input_dim, loaded.output_dim) == (reducer.input_dim, reducer.output_dim)

    summary = json.loads((tmp_path / "reducer" / "reducer.json").read_text())
    assert summary == {"input_dim": 20, "output_dim": dim or 20, "method": "pca" if dim else "none",
                       "explained_variance": pytest.approx(reducer.explained_variance)}


@pytest.mark.parametrize("rows, cols, dim", [(10, 20, 11), (30, 8, 9)])
def test_dim_beyond_rows_or_columns_rejected(rows: int, cols: int, dim: int) -> None:
    """PCA cannot give more components than min(rows, columns): a ValueError saying the limit."""
    with pytest.raises(ValueError, match="at most min"):
        fit_reducer(_features(rows, cols), dim)


def test_dim_equal_to_rows_is_allowed() -> None:
    """The limit itself is fine: as many components as rows."""
    assert fit_reducer(_features(10, 20), 10).transform(_features(3, 20)).shape == (3, 10)
