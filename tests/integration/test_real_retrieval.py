"""Real Caltech101 images and real ImageNet weights (../shared): retrieval works, and only because of the weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ris.config import BackboneConfig, EvalConfig, LatencyConfig
from ris.data.catalog import scan_images
from ris.embed.extract import extract_features
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.protocols import PROTOCOLS
from ris.index import AnnoyIndex, BruteForceIndex

pytestmark = pytest.mark.integration

CLASSES = ("accordion", "airplanes", "dalmatian", "laptop", "pizza", "sunflower", "watch", "cup")
PER_CLASS = 12
# Pretrained MobileNetV2 separates these classes almost perfectly; random weights sit far below.
PRETRAINED_FLOOR = 0.85


@pytest.fixture(scope="module")
def subset(caltech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("caltech_subset")
    for name in CLASSES:
        (root / name).mkdir()
        for image in sorted((caltech_dir / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copyfile(image, root / name / image.name)
    return root


def _book_precision(subset: Path, store: Path, backbone: BackboneConfig) -> dict[str, float]:
    table, skipped = scan_images(subset, progress=False)
    assert not skipped and len(table) == len(CLASSES) * PER_CLASS
    features = extract_features(table, subset, backbone, store, progress=False)
    cfg = EvalConfig(latency=LatencyConfig(queries=20, warmup=2))
    vectors, labels = features.embeddings, features.labels
    book = PROTOCOLS["book"].select(labels, None)
    return {"brute": evaluate_queries(BruteForceIndex.build(vectors), vectors, labels, book, cfg),
            "annoy": evaluate_queries(AnnoyIndex.build(vectors, n_trees=20), vectors, labels, book, cfg)}


def test_pretrained_mobilenet_retrieves_and_random_weights_do_not(subset: Path, shared_weights_dir: Path,
                                                                   tmp_path: Path) -> None:
    common = {"name": "mobilenetv2_100", "batch_size": 16, "num_workers": 0}
    pretrained = _book_precision(subset, tmp_path / "pretrained",
                                 BackboneConfig(**common, weights_dir=str(shared_weights_dir)))
    random = _book_precision(subset, tmp_path / "random", BackboneConfig(**common, pretrained=False))

    assert pretrained["brute"]["precision_at_4"] > PRETRAINED_FLOOR
    assert random["brute"]["precision_at_4"] < PRETRAINED_FLOOR - 0.2
    assert pretrained["brute"]["map_at_r"] > random["brute"]["map_at_r"] + 0.2
    # Annoy over 96 items with 20 trees finds nearly all of the exact neighbours.
    assert pretrained["annoy"]["ann_recall_at_10"] > 0.9
    assert pretrained["brute"]["ann_recall_at_10"] == 1.0
    print({name: {key: round(value, 3) for key, value in result["brute"].items()}
           for name, result in (("pretrained", pretrained), ("random", random))})
