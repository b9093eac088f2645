"""The figures' data: maps of the embeddings, and the best and worst held-out queries with their neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ris.visualise.examples import describe, draw_examples, pick, rank_queries
from ris.visualise.maps import embedding_map, plot_map


def _clusters(classes: int = 4, per_class: int = 10, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 4
    labels = np.repeat([f"c{number}" for number in range(classes)], per_class)
    vectors = centres[np.repeat(np.arange(classes), per_class)] + rng.normal(size=(classes * per_class, dim))
    return vectors.astype(np.float32), labels


def test_maps_cover_a_seeded_sample_in_row_order_and_separate_clusters():
    vectors, labels = _clusters()
    rows = pd.DataFrame({"path": [f"{label}/{n}.jpg" for n, label in enumerate(labels)], "class": labels})
    table = embedding_map(vectors, rows, sample=30, seed=0)
    assert list(table.columns) == ["row", "path", "class", "pca_x", "pca_y", "tsne_x", "tsne_y"]
    assert len(table) == 30 and table["row"].is_monotonic_increasing
    assert (table["path"] == rows["path"].iloc[table["row"]].to_numpy()).all()
    assert table.equals(embedding_map(vectors, rows, sample=30, seed=0))  # seeded: the same map twice
    # Well-separated clusters stay apart on the t-SNE map: every point's nearest other point shares its class.
    points = table[["tsne_x", "tsne_y"]].to_numpy()
    distances = np.linalg.norm(points[:, None] - points[None], axis=2) + np.eye(len(points)) * 1e9
    assert (table["class"].to_numpy()[distances.argmin(1)] == table["class"].to_numpy()).mean() > 0.9


def test_queries_are_ranked_by_exact_search_and_the_picks_are_best_and_worst_of_distinct_classes():
    vectors, labels = _clusters()
    splits = np.array(["train", "train", "val", "train", "test"] * 8, dtype=object)
    vectors[4] = vectors[10]  # row 4 (class c0, test) sits on a c1 image: a confident mistake
    ranked = rank_queries(vectors, labels, splits, k=3)
    assert [example.query for example in ranked] == list(np.flatnonzero(splits == "test"))
    gallery = np.flatnonzero(splits != "test")
    for example in ranked:
        expected = gallery[np.argsort(np.linalg.norm(vectors[gallery] - vectors[example.query], axis=1))[:3]]
        assert example.neighbours == list(expected)
        assert example.precision == np.mean(labels[expected] == labels[example.query])
        assert example.distances == sorted(example.distances)
    worst = pick(ranked, labels, 2, best=False)
    assert worst[0].query == 4 and worst[0].precision < 1
    best = pick(ranked, labels, 4, best=True)
    assert len({labels[example.query] for example in best}) == len(best) == 4
    assert all(example.precision == 1.0 for example in best)


def test_examples_draw_one_grid_row_per_query_and_describe_themselves(tmp_path: Path):
    vectors, labels = _clusters(classes=2, per_class=5, dim=4)
    rows = pd.DataFrame({"path": [f"{label}/{n}.jpg" for n, label in enumerate(labels)], "class": labels})
    for n, path in enumerate(rows["path"]):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (25 * n, 0, 0)).save(tmp_path / path)
    splits = np.array(["train", "train", "train", "val", "test"] * 2, dtype=object)
    examples = pick(rank_queries(vectors, labels, splits, k=2), labels, 2, best=True)
    sheet = Image.open(draw_examples(examples, rows, tmp_path, tmp_path / "out" / "good.png", tile=64))
    single = Image.open(draw_examples(examples[:1], rows, tmp_path, tmp_path / "one.png", tile=64))
    assert sheet.height == 2 * single.height and sheet.width == single.width
    records = describe(examples, rows)
    assert records[0]["query"] == rows["path"][examples[0].query] and len(records[0]["results"]) == 2


def test_a_map_plot_is_written(tmp_path: Path):
    table = pd.DataFrame({"class": ["a", "a", "b"], "tsne_x": [0.0, 1.0, 5.0], "tsne_y": [0.0, 1.0, 5.0]})
    path = plot_map(table, "tsne", "title", tmp_path / "map.png")
    assert Image.open(path).size[0] > 500
