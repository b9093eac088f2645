"""The real run, as a test: all of Caltech101 with MobileNetV2's real weights (tens of minutes on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from ris.config import BackboneConfig, EvalConfig
from ris.data.catalog import scan_images
from ris.embed.extract import extract_features
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.protocols import PROTOCOLS
from ris.index import BruteForceIndex

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_book_protocol_on_full_caltech101_matches_an_independent_count(caltech_dir: Path, shared_weights_dir: Path,
                                                                        tmp_path: Path) -> None:
    table, _ = scan_images(caltech_dir)
    features = extract_features(table, caltech_dir, BackboneConfig(weights_dir=str(shared_weights_dir)),
                                tmp_path / "features", exclude_classes=["BACKGROUND_Google"])
    vectors, labels = np.asarray(features.embeddings), features.labels
    assert len(vectors) == 8677 and len(np.unique(labels)) == 101

    book = PROTOCOLS["book"].select(labels, None)
    metrics = evaluate_queries(BruteForceIndex.build(vectors), vectors, labels, book, EvalConfig())

    # The book's own recipe: scikit-learn brute-force neighbours, 5 per query, the first (itself) dropped.
    _, neighbours = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean").fit(vectors).kneighbors(
        vectors)
    without_self = np.array([[n for n in row if n != query][:4] for query, row in enumerate(neighbours)])
    independent = float((labels[without_self] == labels[:, None]).mean())

    assert abs(metrics["precision_at_4"] - independent) < 0.002
    assert metrics["precision_at_4"] > 0.85  # MobileNetV2 retrieves Caltech101 well (book: ResNet-50 ~0.88)
