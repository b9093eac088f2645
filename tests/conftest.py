"""Shared fixtures: where the real Caltech101 copy and weight files are, and synthetic image collections."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REQUIRE_SHARED_ENV = "RIS_REQUIRE_SHARED"
SHARED_DIR = Path(os.environ.get("RIS_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(autouse=True)
def repository_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run ris in temporary folders: point it at this checkout's conf/ (it reads ./conf otherwise)."""
    monkeypatch.setenv("RIS_CONF_DIR", str(REPO / "conf"))


def _shared_or_skip(relative: str) -> Path:
    """Return ``../shared/<relative>``; skip when absent, or fail when CI demands the real data."""
    path = SHARED_DIR / relative
    if path.exists():
        return path
    message = f"{path} not found: the real Caltech101 copy and weights live in ../shared (see README)"
    if os.environ.get(REQUIRE_SHARED_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_SHARED_ENV}=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture(scope="session")
def caltech_dir() -> Path:
    """The extracted ``101_ObjectCategories`` folder of the real dataset."""
    return _shared_or_skip("data/caltech101/101_ObjectCategories")


@pytest.fixture(scope="session")
def shared_weights_dir() -> Path:
    """Folder of real ImageNet-pretrained timm weights (safetensors)."""
    return _shared_or_skip("weights")


def make_image_tree(root: Path, classes: int = 3, per_class: int = 4, size: int = 48, seed: int = 0) -> Path:
    """Write a class-per-folder JPEG collection whose classes differ in colour, so retrieval can succeed."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[label % 3] = 200 + 10 * (label // 3)
        for item in range(per_class):
            noise = rng.normal(0, 20, size=(size + item, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"image_{item:04d}.jpg", quality=90)
    return root


@pytest.fixture()
def image_tree(tmp_path: Path) -> Path:
    """A small synthetic collection: 3 classes x 4 JPEGs."""
    return make_image_tree(tmp_path / "images")


TINY_PIPELINE = ["backbone.name=test_efficientnet", "backbone.pretrained=false", "backbone.num_workers=0",
                 "backbone.batch_size=8", "data.exclude_classes=[]", "grid.dims=[full,8]",
                 "grid.indexes=[brute,annoy]", "search.dim=8", "search.index=annoy",
                 "indexes.annoy.params.n_trees=10", "eval.latency.queries=20", "eval.latency.warmup=2",
                 "backbone.tail_from=blocks.4", "backbone.devices=1"]
"""A tiny timm model with random weights and small latency samples: the real code path in seconds."""


def build_tiny_pipeline(work: Path, overrides: list[str], classes: int = 3, per_class: int = 6) -> Path:
    """Run download, split, extract, reduce and index in ``work`` on a synthetic collection; return params.yaml."""
    from ris.checks import read_params
    from ris.cli import compose_params
    from ris.stages import download, extract, index, reduce, split

    images = make_image_tree(work / "source", classes=classes, per_class=per_class, size=64)
    params = compose_params([f"data.source_dir={images}", *TINY_PIPELINE, *overrides], out=work / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        cfg = read_params(params)
        download.run(cfg)
        split.run(cfg)
        extract.run(cfg)
        for dim in (None, 8):
            reduce.run(cfg, dim)
            for name in ("brute", "annoy"):
                index.run(cfg, dim, name)
    return params


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tiny_run_overrides(images: Path) -> list[str]:
    """`ris run` on a synthetic collection with timm's tiny test model: the real code path in seconds."""
    return [f"data.source_dir={images}", "data.exclude_classes=[]", "backbone.name=test_efficientnet",
            "backbone.pretrained=false", "backbone.num_workers=0", "backbone.batch_size=6",
            "eval.latency.queries=20", "eval.latency.warmup=2",
            "hydra.sweep.dir=multirun", "hydra.run.dir=outputs"]
