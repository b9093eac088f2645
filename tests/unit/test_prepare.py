"""prepare_collection from a folder, local archives (flat and nested like the official Caltech zip) and a URL."""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_image_tree

from ris.config import DataConfig
from ris.data import prepare
from ris.data.download import ChecksumError
from ris.data.prepare import prepare_collection

IMAGE_ROOT = "101_ObjectCategories"
EXPECTED_PATHS = sorted(f"class_{label:02d}/image_{item:04d}.jpg" for label in range(3) for item in range(2))


def _cfg(tmp_path: Path, **overrides: object) -> DataConfig:
    cfg = DataConfig(
        name="tiny", root=str(tmp_path / "data"), download_dir=str(tmp_path / "downloads"), image_root=IMAGE_ROOT
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _collection(tmp_path: Path) -> Path:
    """A small tree laid out like the extracted dataset: ``<parent>/101_ObjectCategories/<class>/*.jpg``."""
    parent = tmp_path / "extracted"
    make_image_tree(parent / IMAGE_ROOT, classes=3, per_class=2, size=16)
    return parent


def _tar_gz(source_parent: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(source_parent / IMAGE_ROOT, arcname=IMAGE_ROOT)
    return archive


def _official_zip(tmp_path: Path) -> Path:
    """Mimic caltech-101.zip: caltech-101/{101_ObjectCategories.tar.gz, Annotations.tar}."""
    inner = _tar_gz(_collection(tmp_path), tmp_path / f"{IMAGE_ROOT}.tar.gz")
    annotations = io.BytesIO()
    with tarfile.open(fileobj=annotations, mode="w") as bundle:
        info = tarfile.TarInfo("Annotations/note.txt")
        info.size = 2
        bundle.addfile(info, io.BytesIO(b"hi"))
    archive = tmp_path / "caltech-101.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(inner, f"caltech-101/{IMAGE_ROOT}.tar.gz")
        bundle.writestr("caltech-101/Annotations.tar", annotations.getvalue())
        bundle.writestr("caltech-101/show_annotation.m", "% matlab")
    return archive


def _assert_prepared(result: prepare.PreparedCollection, cfg: DataConfig) -> None:
    out_dir = Path(cfg.root) / cfg.name
    assert result.images_dir == out_dir / "images"
    assert result.table_path == out_dir / "images.parquet"
    assert result.table["path"].tolist() == EXPECTED_PATHS
    assert result.skipped == []
    assert all((result.images_dir / path).is_file() for path in EXPECTED_PATHS)
    pd.testing.assert_frame_equal(pd.read_parquet(result.table_path), result.table)
    # Only the two outputs remain: the temporary build folder is gone.
    assert sorted(entry.name for entry in out_dir.iterdir()) == ["images", "images.parquet"]


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_mode, path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def test_from_read_only_folder(tmp_path: Path) -> None:
    parent = _collection(tmp_path)
    for path in sorted(parent.rglob("*"), reverse=True):  # files before their folders
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(parent)
    cfg = _cfg(tmp_path, source_dir=str(parent))  # holds an image_root sub-folder, which is used
    result = prepare_collection(cfg, environ={}, progress=False)
    _assert_prepared(result, cfg)
    assert result.source == f"folder {IMAGE_ROOT}"  # a name, not a machine-specific absolute path
    assert _snapshot(parent) == before
    for path in [result.images_dir, *result.images_dir.rglob("*")]:
        assert path.stat().st_mode & stat.S_IWUSR, f"{path} is not writable, so the copy could not be deleted"


def test_folder_from_env_replaces_old_output(tmp_path: Path) -> None:
    image_root = _collection(tmp_path) / IMAGE_ROOT
    cfg = _cfg(tmp_path)
    first = prepare_collection(cfg, environ={"RIS_DATA_DIR": str(image_root)}, progress=False)
    (first.images_dir / "class_00" / "stale.jpg").write_bytes(b"old")
    # A folder left by a killed run is cleaned up.
    (Path(cfg.root) / cfg.name / ".prepare-killed").mkdir()
    second = prepare_collection(cfg, environ={"RIS_DATA_DIR": str(image_root)}, progress=False)
    _assert_prepared(second, cfg)
    assert second.source == f"folder {image_root.name}"
    assert not (second.images_dir / "class_00" / "stale.jpg").exists()


def test_from_local_tar_gz_unknown_name_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = _tar_gz(_collection(tmp_path), tmp_path / "local.tar.gz")
    cfg = _cfg(tmp_path, archive=str(archive))
    with caplog.at_level(logging.WARNING, logger="ris.data"):
        result = prepare_collection(cfg, environ={"RIS_DATA_ARCHIVE": "/does/not/matter"}, progress=False)
    _assert_prepared(result, cfg)
    assert result.source == f"archive {archive.name}"
    assert any("no entry in data.checksums" in record.getMessage() for record in caplog.records)


def test_from_nested_official_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _official_zip(tmp_path)
    extracted: list[str] = []
    real_extract = prepare.extract_archive

    def spy(path: Path, dest: Path) -> None:
        extracted.append(Path(path).name)
        real_extract(path, dest)

    monkeypatch.setattr(prepare, "extract_archive", spy)
    checksums = {"caltech-101.zip": _md5(archive), f"{IMAGE_ROOT}.tar.gz": _md5(tmp_path / f"{IMAGE_ROOT}.tar.gz")}
    cfg = _cfg(tmp_path, checksums=checksums)
    result = prepare_collection(cfg, environ={"RIS_DATA_ARCHIVE": str(archive)}, progress=False)
    _assert_prepared(result, cfg)
    assert result.source == f"archive {archive.name}"
    assert extracted == ["caltech-101.zip", f"{IMAGE_ROOT}.tar.gz"]  # Annotations.tar is left alone


def test_nested_archive_checksum_mismatch(tmp_path: Path) -> None:
    archive = _official_zip(tmp_path)
    cfg = _cfg(tmp_path, archive=str(archive), checksums={f"{IMAGE_ROOT}.tar.gz": "0" * 32})
    with pytest.raises(ChecksumError, match=f"{IMAGE_ROOT}.tar.gz"):
        prepare_collection(cfg, environ={}, progress=False)
    assert list((Path(cfg.root) / cfg.name).iterdir()) == []


def test_known_archive_checksum_mismatch_keeps_old_output(tmp_path: Path) -> None:
    parent = _collection(tmp_path)
    cfg = _cfg(tmp_path, source_dir=str(parent))
    prepare_collection(cfg, environ={}, progress=False)
    archive = _tar_gz(parent, tmp_path / "caltech-101.tar.gz")
    bad = _cfg(tmp_path, archive=str(archive), checksums={"caltech-101.tar.gz": "0" * 32})
    with pytest.raises(ChecksumError) as error:
        prepare_collection(bad, environ={}, progress=False)
    assert "0" * 32 in str(error.value) and _md5(archive) in str(error.value)
    # The earlier, complete output is untouched and no temporary folder is left.
    out_dir = Path(cfg.root) / cfg.name
    assert sorted(entry.name for entry in out_dir.iterdir()) == ["images", "images.parquet"]
    assert len(pd.read_parquet(out_dir / "images.parquet")) == len(EXPECTED_PATHS)


def test_archive_without_image_root(tmp_path: Path) -> None:
    archive = _tar_gz(_collection(tmp_path), tmp_path / "local.tar.gz")
    cfg = _cfg(tmp_path, archive=str(archive), image_root="SomethingElse")
    with pytest.raises(FileNotFoundError, match="SomethingElse"):
        prepare_collection(cfg, environ={}, progress=False)


def test_empty_image_root_uses_single_top_folder(tmp_path: Path) -> None:
    archive = _tar_gz(_collection(tmp_path), tmp_path / "local.tar.gz")
    cfg = _cfg(tmp_path, archive=str(archive), image_root="")
    _assert_prepared(prepare_collection(cfg, environ={}, progress=False), cfg)


@pytest.fixture()
def served_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, ThreadingHTTPServer]]:
    """A loopback HTTP server publishing a folder; yields the folder, its base URL and the server."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "www"
    folder.mkdir()

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_from_url_then_cached(tmp_path: Path, served_dir: tuple[Path, str, ThreadingHTTPServer]) -> None:
    folder, base_url, httpd = served_dir
    archive = _tar_gz(_collection(tmp_path), folder / "tiny.tar.gz")
    url = f"{base_url}/tiny.tar.gz"
    cfg = _cfg(tmp_path, url=url, checksums={"tiny.tar.gz": _md5(archive)}, retries=0, timeout_s=5.0)
    result = prepare_collection(cfg, environ={}, progress=False)
    _assert_prepared(result, cfg)
    assert result.source == f"download {url}"
    cached = Path(cfg.download_dir) / "tiny.tar.gz"
    assert cached.read_bytes() == archive.read_bytes()

    httpd.shutdown()
    httpd.server_close()  # nothing listens any more: the second run must use the cached copy
    again = _cfg(tmp_path, url=url, checksums={"tiny.tar.gz": _md5(archive)}, retries=0, timeout_s=5.0)
    again.root = str(tmp_path / "data2")
    _assert_prepared(prepare_collection(again, environ={}, progress=False), again)


def test_no_source_is_an_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ValueError) as error:
        prepare_collection(cfg, environ={}, progress=False)
    for key in ("data.source_dir", "RIS_DATA_DIR", "data.archive", "RIS_DATA_ARCHIVE", "data.url"):
        assert key in str(error.value)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match="RIS_DATA_DIR"):
        prepare_collection(cfg, environ={"RIS_DATA_DIR": os.fspath(tmp_path / "nope")}, progress=False)
