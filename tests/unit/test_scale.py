"""Collections of millions on one machine: a folder catalogued in place, PCA fitted on a seeded sample, MAP@R
searched in bounded chunks, embeddings moved in bounded chunks."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_pipeline, make_image_tree

from ris.config import DataConfig, EvalConfig, ReduceConfig
from ris.data.catalog import (
    IN_PLACE_FILE,
    SourceChangedError,
    changed_files,
    check_unchanged,
    image_root,
    read_image_table,
)
from ris.data.prepare import SourceNotFoundError, prepare_collection
from ris.embed import cache as cache_module
from ris.embed.cache import EmbeddingCache
from ris.embed.lightning import ImageFileDataset
from ris.embed.store import FeatureSet
from ris.evaluate import evaluation
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.metrics import (
    average_precision_at_r,
    mean_average_precision_at_r,
    ranked_neighbours,
    same_class,
)
from ris.evaluate.protocols import PROTOCOLS
from ris.images import ImageReadError
from ris.index import BruteForceIndex
from ris.reduce import ReducedStore, fit_reducer
from ris.reduce import pca as pca_module
from ris.reduce.pca import pca_solver, sample_rows
from ris.reduce.store import DESCRIPTION_FILE

# --- a folder catalogued in place -------------------------------------------------------------------------------


def _data_cfg(tmp_path: Path, source: Path, **overrides: object) -> DataConfig:
    cfg = DataConfig(name="tiny", root=str(tmp_path / "data"), download_dir=str(tmp_path / "downloads"),
                     source_dir=str(source), in_place=True)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_mode, path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def test_in_place_catalogues_the_folder_where_it_is(tmp_path: Path) -> None:
    """No copy: ``images/`` only records the folder; the table's paths are relative to it, with sizes and hashes;
    the folder itself is not touched."""
    source = make_image_tree(tmp_path / "source", classes=3, per_class=2, size=16)
    before = _snapshot(source)
    cfg = _data_cfg(tmp_path, source)
    result = prepare_collection(cfg, environ={}, progress=False)

    assert [entry.name for entry in result.images_dir.iterdir()] == [IN_PLACE_FILE]
    assert image_root(result.images_dir) == result.image_root == source.resolve()
    assert result.source == "folder source, in place"
    table = read_image_table(result.table_path)
    assert table["path"].tolist() == sorted(f"class_{c:02d}/image_{i:04d}.jpg" for c in range(3) for i in range(2))
    for row in table.itertuples(index=False):
        data = (source / row.path).read_bytes()
        assert (row.bytes, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert _snapshot(source) == before
    assert sorted(entry.name for entry in (tmp_path / "data" / "tiny").iterdir()) == ["images", "images.parquet"]


def test_copy_and_in_place_replace_each_other(tmp_path: Path) -> None:
    """Switching ``data.in_place`` either way replaces ``images/`` whole and catalogues the same images."""
    source = make_image_tree(tmp_path / "source", classes=2, per_class=2, size=16)
    copied = prepare_collection(_data_cfg(tmp_path, source, in_place=False), environ={}, progress=False)
    assert image_root(copied.images_dir) == copied.images_dir == copied.image_root
    in_place = prepare_collection(_data_cfg(tmp_path, source), environ={}, progress=False)
    assert not (in_place.images_dir / "class_00").exists() and image_root(in_place.images_dir) == source.resolve()
    again = prepare_collection(_data_cfg(tmp_path, source, in_place=False), environ={}, progress=False)
    assert not (again.images_dir / IN_PLACE_FILE).exists() and (again.images_dir / "class_00").is_dir()
    pd.testing.assert_frame_equal(copied.table, in_place.table)
    pd.testing.assert_frame_equal(copied.table, again.table)


def test_in_place_refuses_a_folder_inside_the_collection(tmp_path: Path) -> None:
    """Preparing replaces ``data/<name>/``: a source inside it would be deleted, so it is refused."""
    inside = make_image_tree(tmp_path / "data" / "tiny" / "mine", classes=2, per_class=1, size=16)
    with pytest.raises(SourceNotFoundError, match="inside the collection's own folder"):
        prepare_collection(_data_cfg(tmp_path, inside), environ={}, progress=False)
    assert (inside / "class_00" / "image_0000.jpg").is_file()


def test_in_place_does_not_apply_to_an_archive(tmp_path: Path) -> None:
    """An archive has no folder to catalogue in place: it is unpacked into ``images/`` as always."""
    source = make_image_tree(tmp_path / "source", classes=2, per_class=1, size=16)
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(source, arcname="root")
    cfg = _data_cfg(tmp_path, source, source_dir=None, archive=str(archive))
    result = prepare_collection(cfg, environ={}, progress=False)
    assert (result.images_dir / "class_00" / "image_0000.jpg").is_file()
    assert image_root(result.images_dir) == result.images_dir


def test_changed_files_are_found_by_size_and_absence(tmp_path: Path) -> None:
    source = make_image_tree(tmp_path / "source", classes=2, per_class=2, size=16)
    table = prepare_collection(_data_cfg(tmp_path, source), environ={}, progress=False).table
    check_unchanged(table, source)  # nothing changed: no error
    (source / "class_00" / "image_0000.jpg").write_bytes(b"shorter")
    (source / "class_01" / "image_0001.jpg").unlink()
    changed = changed_files(table, source)
    assert [item["path"] for item in changed] == ["class_00/image_0000.jpg", "class_01/image_0001.jpg"]
    assert changed[1]["reason"] == "missing" and "catalogued with" in changed[0]["reason"]
    with pytest.raises(SourceChangedError, match=r"2 of the 4 images .* `dvc repro -f download`"):
        check_unchanged(table, source)
    # An older catalogue without sizes is still checked for missing files.
    assert [item["path"] for item in changed_files(table.drop(columns="bytes"), source)] == ["class_01/image_0001.jpg"]


def test_extraction_refuses_an_image_whose_content_changed(tmp_path: Path) -> None:
    """A same-size edit is caught where the image is read: its sha256 is not the catalogue's."""
    source = make_image_tree(tmp_path / "source", classes=1, per_class=2, size=16)
    paths = sorted(source.rglob("*.jpg"))
    hashes = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    dataset = ImageFileDataset(paths, lambda image: np.asarray(image), hashes)  # type: ignore[arg-type,return-value]
    assert dataset[1][1] == 1
    data = bytearray(paths[0].read_bytes())
    data[-3] ^= 0xFF  # same size, other content
    paths[0].write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="changed since the collection was catalogued"):
        dataset[0]
    missing = ImageFileDataset([tmp_path / "gone.jpg"], lambda image: image, ["0" * 64])  # type: ignore[arg-type]
    with pytest.raises(ImageReadError, match="no such file"):
        missing[0]


def test_a_pipeline_catalogued_in_place_searches_and_notices_changes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """download -> extract -> reduce -> index with ``data.in_place``: search results are the source's own files,
    and extracting after an image changed size stops with what to run."""
    from ris.checks import read_params
    from ris.images import open_image
    from ris.search.searcher import Searcher
    from ris.stages import extract

    params = build_tiny_pipeline(tmp_path, ["tracking.enabled=false", "data.in_place=true"])
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "source"
    assert [entry.name for entry in (tmp_path / "data/caltech101/images").iterdir()] == [IN_PLACE_FILE]
    target = sorted((source / "class_01").glob("*.jpg"))[2]
    cfg = read_params(params)
    hits = Searcher.from_pipeline(cfg, "full", "brute").search(open_image(target), k=3).hits
    assert hits[0].path == target.resolve() and hits[0].distance < 1e-3

    (source / "class_00" / "image_0000.jpg").write_bytes(b"not the catalogued image")
    with pytest.raises(SourceChangedError, match="class_00/image_0000.jpg"):
        extract.run(cfg)


# --- PCA on a seeded sample -------------------------------------------------------------------------------------


def _low_rank(rows: int, cols: int = 48, rank: int = 6, seed: int = 0) -> np.ndarray:
    """Rows near a ``rank``-dimensional subspace with well-separated variances, plus a little noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(cols, rank)))[0].T
    scores = rng.normal(size=(rows, rank)) * np.geomspace(8.0, 1.0, rank)
    return (scores @ basis + 0.01 * rng.normal(size=(rows, cols)) + 3.0).astype(np.float32)


def test_sample_rows_is_seeded_sorted_and_everything_when_small() -> None:
    rows = np.arange(10, 1010)
    first, again, other = sample_rows(rows, 100, 0), sample_rows(rows, 100, 0), sample_rows(rows, 100, 1)
    np.testing.assert_array_equal(first, again)
    assert len(first) == 100 and len(np.unique(first)) == 100 and np.all(np.diff(first) > 0)
    assert set(first) <= set(rows) and not np.array_equal(first, other)
    assert all(sample_rows(rows, size, 0) is rows for size in (None, 1000, 5000))


def test_solver_exact_for_small_fits_covariance_for_tall_ones_randomized_for_very_wide() -> None:
    assert pca_solver(pca_module.EXACT_SVD_ROWS, 1280) == "full"
    assert pca_solver(pca_module.EXACT_SVD_ROWS + 1, 1280) == "covariance_eigh"
    assert pca_solver(10**6, pca_module.EIGH_MAX_FEATURES + 1) == "randomized"


@pytest.mark.parametrize("solver", ["covariance_eigh", "randomized"])
def test_a_fit_on_a_sample_is_close_to_the_full_fit(solver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On low-rank data, the PCA of a 2,000-row sample spans the same components as the exact fit on all 30,000
    rows, with nearly the same variances; with the same seed it is the same fit, bit for bit."""
    features = _low_rank(30_000)
    exact = fit_reducer(features, 6)  # 30,000 rows: above EXACT_SVD_ROWS, so covariance_eigh
    monkeypatch.setattr(pca_module, "EXACT_SVD_ROWS", 1000)  # make the 2,000-row sample a "large" fit
    if solver == "randomized":
        monkeypatch.setattr(pca_module, "EIGH_MAX_FEATURES", 16)
    assert pca_solver(2000, 48) == solver
    reference = pca_module.PCA(n_components=6, svd_solver="full").fit(features)
    np.testing.assert_allclose(exact.variances, reference.explained_variance_, rtol=1e-4)

    sample = features[sample_rows(np.arange(len(features)), 2000, seed=3)]
    sampled = fit_reducer(sample, 6, seed=3)
    # The same subspace: the projection matrices agree; each component up to sign.
    assert np.abs(np.abs((sampled.components * exact.components).sum(axis=1)) - 1).max() < 1e-3
    np.testing.assert_allclose(sampled.variances, exact.variances, rtol=0.1)
    np.testing.assert_allclose(sampled.mean, exact.mean, atol=0.3)
    again = fit_reducer(features[sample_rows(np.arange(len(features)), 2000, seed=3)], 6, seed=3)
    for name in ("mean", "components", "variances"):
        np.testing.assert_array_equal(getattr(again, name), getattr(sampled, name))


def _feature_set(matrix: np.ndarray) -> FeatureSet:
    rows = pd.DataFrame({"path": [f"c/{row}.jpg" for row in range(len(matrix))], "class": "c",
                         "sha256": [f"{row:064d}" for row in range(len(matrix))]})
    return FeatureSet(matrix, rows, {"key": "k" * 16, "backbone": {"name": "tiny"}})


def test_the_store_is_fitted_on_the_sample_and_records_it(tmp_path: Path) -> None:
    features = _feature_set(_low_rank(500, cols=12))
    splits = np.array(["train", "val", "test", "train"] * 125, dtype=object)
    cfg = ReduceConfig(fit_sample=100, seed=7)
    store = ReducedStore.fit(features, 4, cfg, splits)
    chosen = sample_rows(np.flatnonzero(splits != "test"), 100, 7)
    expected = fit_reducer(features.embeddings[chosen], 4, seed=7)
    np.testing.assert_array_equal(store.reducer.components, expected.components)
    assert store.fitted_rows == 100
    assert store.fit_info == {"rows": 100, "of": 375, "sample": 100, "seed": 7, "solver": "full"}
    store.save(tmp_path)
    assert json.loads((tmp_path / DESCRIPTION_FILE).read_text())["fit"] == store.fit_info
    assert ReducedStore.load(tmp_path).fit_info == store.fit_info
    everything = ReducedStore.fit(features, 4, ReduceConfig(fit_sample=None), splits)
    assert everything.fitted_rows == everything.fit_info["rows"] == everything.fit_info["of"] == 375


def test_the_sweep_fits_the_same_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from ris.config import load_config
    from ris.pca_sweep import sweep_reducers

    features = _feature_set(_low_rank(400, cols=12))
    splits = np.array(["train", "test"] * 200, dtype=object)
    cfg = load_config({"data": {"url": "x"}, "reduce": {"fit_sample": 50, "seed": 2,
                                                       "sweep": {"dims": [2, 4], "whiten": [False],
                                                                 "renormalize": [False]}},
                       "indexes": {"brute": {"family": "brute"}}, "grid": {"indexes": ["brute"]},
                       "search": {"index": "brute"}})
    reducers = sweep_reducers(features, splits, cfg)
    expected = fit_reducer(features.embeddings[sample_rows(np.flatnonzero(splits != "test"), 50, 2)], 4)
    np.testing.assert_array_equal(reducers[-1].components, expected.components)


def test_a_large_transform_is_projected_a_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    features = _low_rank(100, cols=12)
    reducer = fit_reducer(features, 4, whiten=True, renormalize=True)
    whole = reducer.transform(features)
    monkeypatch.setattr(pca_module, "TRANSFORM_ROWS", 7)
    blocks = reducer.transform(features)
    assert blocks.dtype == np.float32 and blocks.shape == (100, 4)
    np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6)
    identity = fit_reducer(features, None)
    assert identity.transform(features) is features  # float32, contiguous: the full embedding is never copied


# --- MAP@R in bounded chunks, and no needless copies ------------------------------------------------------------


def _reference_map_at_r(index, queries, query_labels, gallery_labels, self_ids) -> float:  # type: ignore[no-untyped-def]
    """The implementation before streaming: each class searched as one batch at k = R."""
    scores = []
    for label in np.unique(query_labels):
        members = np.flatnonzero(query_labels == label)
        relevant = int((gallery_labels == label).sum()) - (self_ids is not None)
        if relevant <= 0:
            continue
        ids = ranked_neighbours(index, queries[members], None if self_ids is None else self_ids[members], relevant)
        matches = same_class(ids, query_labels[members], gallery_labels)
        scores.extend(average_precision_at_r(row, relevant) for row in matches)
    return float(np.mean(scores)) if scores else float("nan")


class _Recording(BruteForceIndex):
    """Exact search that records the size of every result list it returns."""

    largest = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, distances = super().search(queries, k)
        _Recording.largest = max(_Recording.largest, ids.size if len(queries) > 1 else 0)
        return ids, distances


def _clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [90, 60, 31, 7, 2, 1]
    labels = np.repeat(np.array([f"class_{n}" for n in range(len(sizes))], dtype=object), sizes)
    centres = rng.normal(size=(len(sizes), 16)) * 2
    vectors = centres[np.repeat(np.arange(len(sizes)), sizes)] + rng.normal(size=(sum(sizes), 16))
    order = rng.permutation(len(labels))
    return vectors[order].astype(np.float32), labels[order]


@pytest.mark.parametrize("protocol", ["book", "heldout"])
def test_map_at_r_is_the_same_in_any_chunking_and_bounded(protocol: str) -> None:
    vectors, labels = _clustered()
    splits = np.array(["train", "val", "test"] * (len(labels) // 3 + 1), dtype=object)[: len(labels)]
    query_set = PROTOCOLS[protocol].select(labels, splits)
    index = _Recording.build(vectors[query_set.gallery])
    queries, query_labels, gallery_labels = vectors[query_set.queries], labels[query_set.queries], \
        labels[query_set.gallery]
    self_ids = np.searchsorted(query_set.gallery, query_set.queries) if query_set.leave_one_out else None
    reference = _reference_map_at_r(index, queries, query_labels, gallery_labels, self_ids)
    assert 0.2 < reference < 1.0
    for max_ids in (1, 50, 91, 500, 10**9):
        _Recording.largest = 0
        value = mean_average_precision_at_r(index, queries, query_labels, gallery_labels, self_ids, max_ids=max_ids)
        assert value == reference  # bit for bit
        assert _Recording.largest <= max(max_ids, 91)  # one query's list (R + 1 <= 91) may exceed a tiny budget
    assert np.isnan(mean_average_precision_at_r(index, queries[:0], query_labels[:0], gallery_labels, None))


def test_the_book_protocol_neither_copies_the_vectors_nor_searches_exact_twice(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    vectors, labels = _clustered(1)
    everything = np.arange(len(vectors))
    assert evaluation._rows(vectors, everything) is vectors
    np.testing.assert_array_equal(evaluation._rows(vectors, everything[1:]), vectors[1:])
    np.testing.assert_array_equal(evaluation._rows(vectors, everything[::-1]), vectors[::-1])
    index = BruteForceIndex.build(vectors)
    built: list[int] = []
    original = BruteForceIndex.build.__func__  # type: ignore[attr-defined]

    def counting(cls, rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(len(rows))
        return original(cls, rows, *args, **kwargs)

    monkeypatch.setattr(BruteForceIndex, "build", classmethod(counting))
    metrics = evaluate_queries(index, vectors, labels, PROTOCOLS["book"].select(labels, None), EvalConfig())
    assert built == [] and metrics["ann_recall_at_10"] == 1.0


# --- the embedding cache grows a chunk at a time ----------------------------------------------------------------


def test_the_embedding_cache_grows_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "COPY_ROWS", 2)
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    cache = EmbeddingCache(tmp_path / "cache")
    cache.add([f"h{n}" for n in range(5)], first)
    cache.add(["h1", "x0", "x1", "h4"], second)  # two already cached: skipped
    found, rows = EmbeddingCache(tmp_path / "cache").find(["x1", "nope", "h0", "x0"])
    assert found.tolist() == [True, False, True, True] and rows.tolist() == [6, 0, 5]
    np.testing.assert_array_equal(cache.matrix, np.concatenate([first, second[1:3]]))


# --- the measurement behind the README's "A million images" -----------------------------------------------------


def test_the_scale_measurement_runs_on_a_built_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m ris.scale` measures every stage on small samples and writes its estimates (no timing asserted)."""
    from ris import scale

    params = build_tiny_pipeline(tmp_path, ["tracking.enabled=false", "reduce.fit_sample=300"])
    monkeypatch.chdir(tmp_path)
    scale.main(["--params", str(params), "--images", "5", "--vectors", "300", "--target", "1000", "--out",
                str(tmp_path / "scale.json")])
    result = json.loads((tmp_path / "scale.json").read_text())
    assert result["collection"]["images"] == 5 and result["collection"]["catalogue_s_per_image"] > 0
    assert result["extract"]["gpu_images_per_second_book"] == scale.BOOK_GPU_IMAGES_PER_SECOND
    assert set(result["indexes"]) == {"brute", "annoy"} and set(result["indexes"]["annoy"]["sizes"]) == {"30", "300"}
    assert set(result["pca"]["solvers"]) == {"synthetic", "features"}
    estimate = result["estimate"]
    assert estimate["images"] == 1000 and all(value is None or value >= 0 for value in estimate["seconds"].values())
    assert estimate["bytes"]["feature store"] == 1000 * 4 * result["pca"]["width"]
