"""Prepare stage: turn a download, a local archive or an extracted folder into ``images/`` plus ``images.parquet``.

A folder is copied into ``images/`` unless ``data.in_place``: then it is catalogued where it is, and ``images/``
holds only a record of where (:data:`ris.data.catalog.IN_PLACE_FILE`).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from ris.config import DataConfig
from ris.data.additions import AdditionError, copy_additions, list_additions
from ris.data.catalog import scan_images, write_in_place_record
from ris.data.download import ChecksumError, download_file, extract_archive, is_archive, md5sum
from ris.errors import UserFacingError
from ris.locks import locked

logger = logging.getLogger("ris.data")


class SourceNotFoundError(UserFacingError, FileNotFoundError):
    """The configured image folder or archive is missing, or holds no image root."""


class NoSourceError(UserFacingError, ValueError):
    """No image source is configured at all."""

DATA_DIR_ENV = "RIS_DATA_DIR"
DATA_ARCHIVE_ENV = "RIS_DATA_ARCHIVE"
WORK_PREFIX = ".prepare-"
MAX_NESTING = 4
"""How many archive-inside-archive levels are unpacked while looking for the image root."""


@dataclass
class PreparedCollection:
    """Where the prepared collection lives and what it holds."""

    images_dir: Path
    table_path: Path
    table: pd.DataFrame
    skipped: list[dict[str, str]]
    source: str  # "download <url>", "archive <file name>", "folder <folder name>" (+ ", in place")
    image_root: Path | None = None  # where the table's paths are relative to: images_dir, or the folder in place

    def __post_init__(self) -> None:
        if self.image_root is None:
            self.image_root = self.images_dir


def _verify_known(archive: Path, checksums: Mapping[str, str]) -> bool:
    """Check ``archive``'s md5 when its file name is listed in ``checksums``; return whether it was listed.

    Raises:
        ChecksumError: the md5 differs from the listed one.
    """
    expected = checksums.get(archive.name)
    if expected is None:
        return False
    started = time.perf_counter()
    actual = md5sum(archive)
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"{archive}: md5 is {actual}, expected {expected} (data.checksums['{archive.name}']); "
            "the file is corrupt or a different version"
        )
    logger.info("md5 of %s matches data.checksums (%.1f s)", archive, time.perf_counter() - started)
    return True


def _file_name_from_url(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise ValueError(f"data.url {url!r} does not end with a file name to save the download under")
    return name


def _fetch(cfg: DataConfig, progress: bool) -> Path:
    """Return the downloaded archive in ``cfg.download_dir``, reusing a cached copy whose md5 matches."""
    name = _file_name_from_url(cfg.url)
    dest = Path(cfg.download_dir) / name
    expected = cfg.checksums.get(name)
    if dest.is_file():
        if expected is None:
            # Only complete downloads are ever renamed to dest, so an existing file is whole.
            logger.warning("reusing %s without a checksum: data.checksums has no entry for %s", dest, name)
            return dest
        if md5sum(dest).lower() == expected.lower():
            logger.info("reusing %s (md5 matches)", dest)
            return dest
        logger.warning("cached %s has the wrong md5; downloading it again", dest)
        dest.unlink()
    if expected is None:
        logger.warning("data.checksums has no entry for %s: the download cannot be verified", name)
    return download_file(cfg.url, dest, md5=expected, timeout_s=cfg.timeout_s, retries=cfg.retries, progress=progress)


def _find_dir(top: Path, name: str) -> Path | None:
    """Return the shallowest folder named ``name`` under ``top`` (breadth first, sorted), or None."""
    if (top / name).is_dir():
        return top / name
    level = [top]
    while level:
        children = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
        for child in children:
            if child.name == name:
                return child
        level = children
    return None


def _find_nested_archive(top: Path, image_root: str) -> Path | None:
    """Return the shallowest archive under ``top`` whose name starts with ``image_root``, or None."""
    candidates = [
        path for path in top.rglob("*") if path.name.startswith(image_root) and path.is_file() and is_archive(path)
    ]
    return min(candidates, key=lambda path: (len(path.parts), path.as_posix()), default=None)


def _single_top_folder(top: Path) -> Path:
    """With no ``image_root`` configured: the archive's single top folder, else the extraction root itself."""
    entries = [entry for entry in top.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return top


def _unpack(archive: Path, work: Path, cfg: DataConfig) -> Path:
    """Extract ``archive`` (and nested archives, as needed) into ``work`` and return the image root inside it.

    Raises:
        ChecksumError: a nested archive with a known name has the wrong md5.
        FileNotFoundError: no folder named ``cfg.image_root`` appears, even after unpacking nested archives.
    """
    extracted = work / "extracted"
    extract_archive(archive, extracted)
    if not cfg.image_root:
        return _single_top_folder(extracted)
    for _ in range(MAX_NESTING):
        found = _find_dir(extracted, cfg.image_root)
        if found is not None:
            return found
        # The official Caltech zip holds 101_ObjectCategories.tar.gz next to Annotations.tar: unpack only the former.
        nested = _find_nested_archive(extracted, cfg.image_root)
        if nested is None:
            break
        if not _verify_known(nested, cfg.checksums):
            logger.info("nested archive %s has no entry in data.checksums; not verified", nested.name)
        extract_archive(nested, nested.parent)
        nested.unlink()  # our own temporary copy: freeing the space matters for multi-GB archives
    raise SourceNotFoundError(
        f"{archive} holds no folder named '{cfg.image_root}' (data.image_root), nor an archive named "
        f"'{cfg.image_root}.*' that contains one; check data.image_root"
    )


def _copy_folder(folder: Path, dest: Path) -> None:
    """Copy an extracted collection without touching it; the copy is writable even if the source is read-only."""
    # copyfile copies bytes only, so read-only file modes are not carried over.
    shutil.copytree(folder, dest, copy_function=shutil.copyfile)
    # copytree still copies folder modes (copystat); give the owner write access back so the copy can be deleted.
    for current, _, _ in os.walk(dest):
        mode = stat.S_IMODE(os.stat(current).st_mode)
        os.chmod(current, mode | stat.S_IRWXU)


def _materialize(cfg: DataConfig, environ: Mapping[str, str], work: Path,
                 progress: bool) -> tuple[Path, str, bool]:
    """Put the collection's class folders inside ``work`` (or, for a folder catalogued in place, leave them where they
    are); return the image root, a description of the source and whether it is catalogued in place."""
    folder = cfg.source_dir or environ.get(DATA_DIR_ENV)
    if folder:
        folder_path = Path(folder)
        if not folder_path.is_dir():
            raise SourceNotFoundError(f"image folder {folder_path} (data.source_dir or env {DATA_DIR_ENV}) not found")
        if cfg.image_root and (folder_path / cfg.image_root).is_dir():
            folder_path = folder_path / cfg.image_root
        if cfg.in_place:
            # Absolute: extraction and search read the images from here, whatever their working directory.
            root = folder_path.resolve()
            if root.is_relative_to(work.parent.resolve()):
                raise SourceNotFoundError(f"image folder {folder_path} is inside the collection's own folder "
                                          f"{work.parent}, which preparing replaces: with data.in_place, point "
                                          "data.source_dir (or env RIS_DATA_DIR) at a folder outside it")
            return root, f"folder {folder_path.name}, in place", True
        started = time.perf_counter()
        _copy_folder(folder_path, work / "copied")
        logger.info("copied %s in %.1f s", folder_path, time.perf_counter() - started)
        return work / "copied", f"folder {folder_path.name}", False  # the name: same data, same report anywhere

    if cfg.in_place:
        logger.info("data.in_place applies to an image folder only: an archive is unpacked into %s", cfg.root)
    archive = cfg.archive or environ.get(DATA_ARCHIVE_ENV)
    if archive:
        archive_path = Path(archive)
        if not archive_path.is_file():
            raise SourceNotFoundError(f"archive {archive_path} (data.archive or env {DATA_ARCHIVE_ENV}) not found")
        if not _verify_known(archive_path, cfg.checksums):
            logger.warning("archive %s has no entry in data.checksums: using it unverified", archive_path)
        return _unpack(archive_path, work, cfg), f"archive {archive_path.name}", False

    if cfg.url:
        # download_file verifies the md5 of known names, so the archive is not hashed a second time here.
        return _unpack(_fetch(cfg, progress), work, cfg), f"download {cfg.url}", False

    raise NoSourceError(
        "no image source configured: set data.source_dir (or env RIS_DATA_DIR) to an extracted image folder, "
        "data.archive (or env RIS_DATA_ARCHIVE) to a local archive, or data.url to an archive to download"
    )


def _add_additions(cfg: DataConfig, image_root: Path, in_place: bool) -> int:
    """Copy the images added while serving (``cfg.additions``) into the collection's staged image tree.

    Raises:
        AdditionError: the collection is catalogued in place (its source folder is never written to) and images
            were added, or an addition's place is taken.
    """
    folder = Path(cfg.additions)
    if in_place:
        if list_additions(folder):
            raise AdditionError(f"{folder} (data.additions) holds added images, but the collection is catalogued "
                                "in place (data.in_place), and its source folder is never written to: move them "
                                "into the source folder's class folders, then run `dvc repro -f download`")
        return 0
    added = copy_additions(folder, image_root)
    if added:
        logger.info("added %d images from %s (data.additions)", added, folder)
    return added


def _remove_stale_work(out_dir: Path) -> None:
    """Delete temporary folders that a killed earlier run left behind (called under the collection's lock, which
    every prepare holds while its work folder exists, so none of them belongs to a live process)."""
    for stale in out_dir.glob(f"{WORK_PREFIX}*"):
        if stale.is_dir():
            logger.warning("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)


def prepare_collection(
    cfg: DataConfig, *, environ: Mapping[str, str] = os.environ, progress: bool = True
) -> PreparedCollection:
    """Lay out the image collection as ``<root>/<name>/images/<class>/...`` and catalogue it in ``images.parquet``.

    Source precedence: ``cfg.source_dir`` or env RIS_DATA_DIR (an extracted folder: copied, or with
    ``cfg.in_place`` catalogued where it is, ``images/`` then recording only where), then ``cfg.archive``
    or env RIS_DATA_ARCHIVE (a local archive), then ``cfg.url`` (downloaded into ``cfg.download_dir``). Archives
    whose names are keys of ``cfg.checksums`` are md5-verified. Everything is built in a temporary folder next to
    the outputs and moved into place at the end, so an interrupted run leaves no half-written output.
    ``cfg.exclude_classes`` is not applied: the table lists every image. The images added while serving
    (``cfg.additions``, :mod:`ris.data.additions`) join the collection as ``<class>/added/<file>``.

    Args:
        cfg: The data configuration.
        environ: Where RIS_DATA_DIR and RIS_DATA_ARCHIVE are looked up.
        progress: Show progress (bars on a terminal, log lines otherwise).

    Returns:
        The output locations, the image table and the skipped files.

    Raises:
        ValueError: no source is configured.
        FileNotFoundError: the configured folder or archive, or the image root inside the archive, is missing.
        ChecksumError: an archive with a known name has the wrong md5.
        DownloadError: the download failed.
    """
    out_dir = Path(cfg.root) / cfg.name
    # Exclusive for the whole preparation: other prepares wait, and readers (under the shared lock) never see
    # the table or the images being replaced.
    with locked(out_dir, exclusive=True):
        return _prepare_locked(cfg, out_dir, environ, progress)


def ensure_collection(cfg: DataConfig, *, environ: Mapping[str, str] = os.environ, progress: bool = True) -> Path:
    """The prepared collection's image table, preparing the collection first when there is none.

    However many processes ask at once, one prepares and the others wait and reuse it.
    """
    out_dir = Path(cfg.root) / cfg.name
    with locked(out_dir, exclusive=True):
        if not (out_dir / "images.parquet").is_file():
            _prepare_locked(cfg, out_dir, environ, progress)
    return out_dir / "images.parquet"


def _prepare_locked(cfg: DataConfig, out_dir: Path, environ: Mapping[str, str], progress: bool) -> PreparedCollection:
    started = time.perf_counter()
    images_dir = out_dir / "images"
    table_path = out_dir / "images.parquet"
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_work(out_dir)
    # Inside out_dir, so the final moves are renames on one file system.
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=out_dir))
    try:
        image_root, source, in_place = _materialize(cfg, environ, work, progress)
        logger.info("read collection from %s", source)
        added = _add_additions(cfg, image_root, in_place)
        if added:
            source = f"{source} + {added} added"
        table, skipped = scan_images(image_root, progress=progress)
        staged_table = work / "images.parquet"
        table.to_parquet(staged_table, index=False)
        staged_images = image_root
        if in_place:  # images/ only says where the images are; the source folder is never written to
            staged_images = work / "in-place"
            write_in_place_record(staged_images, image_root)
        # Drop the old table first: it is written last, so its presence means images/ matches it.
        table_path.unlink(missing_ok=True)
        if images_dir.exists():
            os.replace(images_dir, work / "old-images")  # deleted with work below
        os.replace(staged_images, images_dir)
        os.replace(staged_table, table_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "wrote %s (%d images, %d classes%s) and %s in %.1f s",
        images_dir,
        len(table),
        table["class"].nunique(),
        f", catalogued in place under {image_root}" if in_place else "",
        table_path,
        time.perf_counter() - started,
    )
    return PreparedCollection(images_dir=images_dir, table_path=table_path, table=table, skipped=skipped, source=source,
                              image_root=image_root if in_place else images_dir)
