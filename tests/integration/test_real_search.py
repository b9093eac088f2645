"""`ris search` with real ImageNet weights on real Caltech101 images (../shared): outside photos land in the
classes people would expect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ris.checks import read_params
from ris.cli import compose_params
from ris.search import command
from ris.stages import download, extract, index, reduce, split

pytestmark = pytest.mark.integration

CLASSES = ("cup", "wild_cat", "airplanes", "laptop", "pizza", "sunflower", "watch", "dalmatian")
PER_CLASS = 12


@pytest.fixture(scope="module")
def built(caltech_dir: Path, shared_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline over 8 real classes x 12 images with MobileNetV2's real weights, built by the real stages."""
    work = tmp_path_factory.mktemp("real_search")
    source = work / "source"
    for name in CLASSES:
        (source / name).mkdir(parents=True)
        for image in sorted((caltech_dir / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copyfile(image, source / name / image.name)
    params = compose_params([f"data.source_dir={source}", f"backbone.weights_dir={shared_weights_dir}",
                             "data.exclude_classes=[]", "backbone.num_workers=0", "grid.dims=[full,32]",
                             "grid.indexes=[annoy]", "search.dim=32", "search.index=annoy", "tracking.enabled=false"],
                            out=work / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        cfg = read_params(params)
        for stage in (download, split, extract):
            stage.run(cfg)
        reduce.run(cfg, 32)
        index.run(cfg, 32, "annoy")
    return work


@pytest.mark.parametrize("photo, expected", [("coffee", "cup"), ("chelsea", "wild_cat")])
def test_outside_photo_finds_its_class(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], photo: str, expected: str) -> None:
    data = pytest.importorskip("skimage.data")
    query = tmp_path / f"{photo}.jpg"
    Image.fromarray(getattr(data, photo)()).save(query)
    monkeypatch.chdir(built)
    assert command.main([str(query), "--json", "-k", "3", "--grid-dir", str(tmp_path)]) == 0
    results = json.loads(capsys.readouterr().out)[0]["results"]
    assert [hit["class"] for hit in results].count(expected) >= 2, results
    assert results[0]["class"] == expected
    assert (tmp_path / f"{photo}.png").is_file()
