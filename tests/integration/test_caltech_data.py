"""The data stage on real Caltech101 files: a small archive cut from the shared copy, and the Faces_easy class."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

from ris.config import DataConfig
from ris.data.catalog import scan_images
from ris.data.prepare import prepare_collection

pytestmark = pytest.mark.integration

IMAGE_ROOT = "101_ObjectCategories"
CLASSES = ("accordion", "anchor", "ant")
BACKGROUND_IMAGES = 5


def _manifest(caltech_dir: Path) -> dict[str, str]:
    """sha256 per ``101_ObjectCategories/...`` path from the shared copy's manifest (empty when absent)."""
    manifest = caltech_dir.parent / "MANIFEST.sha256"
    if not manifest.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in manifest.read_text().splitlines() if line.strip())
    return {path.strip(): digest for digest, path in pairs}


def test_prepare_from_real_subset_archive(caltech_dir: Path, tmp_path: Path) -> None:
    background = caltech_dir / "BACKGROUND_Google"
    members = [caltech_dir / name / file.name for name in CLASSES for file in sorted((caltech_dir / name).iterdir())]
    members += sorted(background.glob("image_*.jpg"))[:BACKGROUND_IMAGES]
    archive = tmp_path / f"{IMAGE_ROOT}.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as bundle:
        for path in [*members, background / "tmp"]:
            bundle.add(path, arcname=f"{IMAGE_ROOT}/{path.relative_to(caltech_dir).as_posix()}")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    cfg = DataConfig(
        name="caltech_subset",
        root=str(tmp_path / "data"),
        download_dir=str(tmp_path / "downloads"),
        archive=str(archive),
        image_root=IMAGE_ROOT,
        checksums={archive.name: md5},
    )

    result = prepare_collection(cfg, environ={}, progress=False)

    expected = sorted(path.relative_to(caltech_dir).as_posix() for path in members)
    assert result.table["path"].tolist() == expected
    counts = result.table["class"].value_counts().to_dict()
    assert counts == {
        **{name: len(list((caltech_dir / name).iterdir())) for name in CLASSES},
        "BACKGROUND_Google": BACKGROUND_IMAGES,
    }
    assert [item["path"] for item in result.skipped] == ["BACKGROUND_Google/tmp"]
    assert (result.table["width"] > 0).all() and (result.table["height"] > 0).all()
    manifest = _manifest(caltech_dir)
    if manifest:
        for row in result.table.itertuples(index=False):
            assert row.sha256 == manifest[f"{IMAGE_ROOT}/{row.path}"]
    assert (result.images_dir / "BACKGROUND_Google" / "tmp").is_file()  # copied as-is, only left out of the table


def test_scan_real_faces_easy(caltech_dir: Path, tmp_path: Path) -> None:
    # scan_images wants root/<class>/...; a copy (7.7 MB) gives Faces_easy a root of its own.
    root = tmp_path / "collection"
    shutil.copytree(caltech_dir / "Faces_easy", root / "Faces_easy", copy_function=shutil.copyfile)
    table, skipped = scan_images(root, progress=False)
    assert len(table) == 435 and skipped == []
    assert set(table["class"]) == {"Faces_easy"}
    assert (table["width"] > 0).all() and (table["height"] > 0).all()
    assert table["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
