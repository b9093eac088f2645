"""Feature reduction: the identity when the full embedding is kept, PCA otherwise, and its persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from ris.artifacts import ArtifactError
from ris.config import ConfigError, ReduceConfig
from ris.embed.store import FeatureSet
from ris.reduce import ReducedStore, fit_reducer


def _features(rows: int = 60, cols: int = 20, seed: int = 0) -> np.ndarray:
    """Correlated features with a decaying spectrum, so a few components carry most of the variance."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, cols)) * np.linspace(5.0, 0.1, cols)) @ rng.normal(size=(cols, cols))


@pytest.mark.parametrize("dim, method", [(None, "pca"), (20, "pca")])
def test_identity(dim: int | None, method: str) -> None:
    """No dimension ('full'), or the full width, keeps the features unchanged (as float32)."""
    features = _features()
    reducer = fit_reducer(features, dim, method=method)
    assert reducer.components is None and reducer.method == "none"
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


def test_whiten_gives_unit_variance_as_sklearn_does() -> None:
    """``whiten=True`` scales every kept component to unit variance, exactly as scikit-learn's PCA."""
    features = _features()
    reduced = fit_reducer(features, 4, whiten=True).transform(features)
    np.testing.assert_allclose(reduced.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    reference = PCA(n_components=4, whiten=True, svd_solver="full").fit(features.astype(np.float32))
    np.testing.assert_allclose(reduced, reference.transform(features), rtol=1e-4, atol=1e-4)


def _all_train(features: np.ndarray) -> np.ndarray:
    return np.full(len(features), "train", dtype=object)


def _feature_set(features: np.ndarray, key: str = "k1") -> FeatureSet:
    rows = pd.DataFrame({"path": [f"c/{row}.jpg" for row in range(len(features))], "class": "c"})
    return FeatureSet(features.astype(np.float32), rows, {"key": key, "backbone": {"name": "net"}})


@pytest.mark.parametrize("dim", [None, 6])
def test_store_round_trip(tmp_path: Path, dim: int | None) -> None:
    """A saved store's reducer transforms new features exactly as the fitted one; its vectors are the reduced
    features; its description says what it is and what it was built from."""
    features, new = _features(), _features(seed=1)
    store = ReducedStore.fit(_feature_set(features), dim, ReduceConfig(), splits=_all_train(features))
    store.save(tmp_path / "reduced")
    loaded = ReducedStore.load(tmp_path / "reduced", expect={"features_key": "k1"})
    np.testing.assert_array_equal(loaded.reducer.transform(new), store.reducer.transform(new))
    np.testing.assert_array_equal(loaded.vectors, store.reducer.transform(features))
    assert not list((tmp_path / "reduced").glob("*.pkl"))  # arrays, not a pickle: loading executes nothing

    description = json.loads((tmp_path / "reduced" / "reduced.json").read_text())
    assert description["built_from"] == {"backbone": "net", "features_key": "k1", "dim": str(dim or "full")}
    assert (description["input_dim"], description["output_dim"], description["rows"]) == (20, dim or 20, 60)
    assert description["method"] == ("pca" if dim else "none")
    assert description["explained_variance"] == pytest.approx(store.reducer.explained_variance)


def test_store_for_other_features_or_damaged_is_refused(tmp_path: Path) -> None:
    """A reduced store made from other features, or with vectors cut short, fails on load naming the file."""
    store = ReducedStore.fit(_feature_set(_features(), key="old"), 4, ReduceConfig(), _all_train(_features()))
    store.save(tmp_path / "reduced")
    with pytest.raises(ArtifactError, match="'old', expected 'new'"):
        ReducedStore.load(tmp_path / "reduced", expect={"features_key": "new"})
    np.save(tmp_path / "reduced" / "vectors.npy", np.zeros((59, 4), np.float32))
    with pytest.raises(ArtifactError, match="vectors are"):
        ReducedStore.load(tmp_path / "reduced")


def test_dim_beyond_the_features_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="grid.dims"):
        ReducedStore.fit(_feature_set(_features(10, 20)), 11, ReduceConfig(), _all_train(_features(10, 20)))


def test_store_is_fitted_without_the_test_images() -> None:
    """The projection is fitted on train and val rows only: test rows are reduced by it but never shape it."""
    features = _features()
    splits = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10, dtype=object)
    store = ReducedStore.fit(_feature_set(features), 5, ReduceConfig(), splits)
    reference = PCA(n_components=5, svd_solver="full").fit(features[:50].astype(np.float32))
    np.testing.assert_allclose(store.vectors, reference.transform(features), rtol=1e-4, atol=1e-4)
    assert store.fitted_rows == 50
    changed = features.copy()
    changed[50:] += 100.0  # moving only the test rows leaves the fitted projection as it was
    moved = ReducedStore.fit(_feature_set(changed), 5, ReduceConfig(), splits)
    np.testing.assert_allclose(moved.reducer.components, store.reducer.components, atol=1e-6)


@pytest.mark.parametrize("rows, cols, dim", [(10, 20, 11), (30, 8, 9)])
def test_dim_beyond_rows_or_columns_rejected(rows: int, cols: int, dim: int) -> None:
    """PCA cannot give more components than min(rows, columns): a ValueError saying the limit."""
    with pytest.raises(ValueError, match="at most min"):
        fit_reducer(_features(rows, cols), dim)


def test_dim_equal_to_rows_is_allowed() -> None:
    """The limit itself is fine: as many components as rows."""
    assert fit_reducer(_features(10, 20), 10).transform(_features(3, 20)).shape == (3, 10)
