"""Catalogue a class-per-folder image collection: one decoded, hashed row per image, and a list of what was skipped."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ris.artifacts import ArtifactError
from ris.images import IMAGE_SUFFIXES, ImageReadError, open_image
from ris.locks import locked

logger = logging.getLogger("ris.data")

COLUMNS = ["path", "class", "sha256", "width", "height"]
IMAGE_EXTENSIONS = IMAGE_SUFFIXES
"""Suffixes treated as images; anything else (e.g. Caltech101's stray ``BACKGROUND_Google/tmp``) is skipped."""


def _list_files(root: Path) -> list[Path]:
    """Return every non-hidden file under ``root`` as a path relative to it, sorted by POSIX path."""
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into hidden folders (.git, .ipynb_checkpoints, ...).
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        base = Path(folder).relative_to(root)
        found.extend(base / name for name in filenames if not name.startswith("."))
    return sorted(found, key=lambda path: path.as_posix())


def scan_images(root: Path, *, progress: bool = True) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Decode and hash every image of a ``root/<class>/...`` collection.

    Args:
        root: Folder whose sub-folders are the classes; files deeper down belong to their first-level folder.
        progress: Show a tqdm progress bar.

    Returns:
        A table with columns ``path`` (POSIX, relative to ``root``), ``class``, ``sha256``, ``width`` and ``height``,
        sorted by path; and the skipped files as ``{"path": ..., "reason": ...}`` (files directly in ``root``,
        non-image suffixes, undecodable or truncated images). Hidden files and folders are ignored silently.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist or is not a folder")
    started = time.perf_counter()
    files = _list_files(root)
    rows: list[dict[str, object]] = []
    skipped: list[dict[str, str]] = []
    for relative in tqdm(files, desc="scan images", unit="file", disable=not progress):
        path = relative.as_posix()
        if len(relative.parts) < 2:
            skipped.append({"path": path, "reason": "file directly in the image root, outside any class folder"})
            continue
        if relative.suffix.lower() not in IMAGE_EXTENSIONS:
            suffix = relative.suffix or "(none)"
            skipped.append({"path": path, "reason": f"not an image file: suffix {suffix}"})
            continue
        data = (root / relative).read_bytes()
        try:
            # The decoding extraction and search use: every pixel, EXIF applied, decompression bombs refused.
            width, height = open_image(data, name=path).size
        except ImageReadError as error:
            skipped.append({"path": path, "reason": str(error).removeprefix(f"{path}: ")})
            continue
        rows.append(
            {
                "path": path,
                "class": relative.parts[0],
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": width,
                "height": height,
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"width": "int64", "height": "int64"})
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    logger.info(
        "scanned %s: %d images in %d classes, %d files skipped, in %.1f s",
        root,
        len(table),
        table["class"].nunique(),
        len(skipped),
        time.perf_counter() - started,
    )
    for item in skipped:
        logger.info("skipped %s: %s", item["path"], item["reason"])
    return table, skipped


def duplicate_groups(table: pd.DataFrame) -> list[list[str]]:
    """The paths of files with identical content (same sha256), one sorted group per content, groups sorted.

    Duplicates stay in the collection (each is embedded once); a duplicate in another class, or in the gallery of
    its own query, changes what retrieval can score, so the data report lists them.
    """
    repeated = table[table["sha256"].duplicated(keep=False)]
    return sorted(sorted(group["path"]) for _, group in repeated.groupby("sha256"))


def read_image_table(path: Path) -> pd.DataFrame:
    """The image table the download stage wrote (path, class, sha256, width, height).

    Raises:
        ArtifactError: it is missing or unreadable; the message says to run the download stage.
    """
    remedy = "run `dvc repro` (the download stage writes it)"
    if not path.is_file():
        raise ArtifactError(f"{path} not found: {remedy}")
    try:
        with locked(path.parent, exclusive=False):  # the collection's lock: never a table being replaced
            return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path} is unreadable ({error}): {remedy}") from error
