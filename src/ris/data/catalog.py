"""Catalogue a class-per-folder image collection: one decoded, hashed row per image, and a list of what was skipped."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from ris.artifacts import ArtifactError
from ris.errors import UserFacingError
from ris.images import IMAGE_SUFFIXES, ImageReadError, open_image
from ris.locks import locked
from ris.progress import progress as counted

logger = logging.getLogger("ris.data")

COLUMNS = ["path", "class", "sha256", "bytes", "width", "height"]
IN_PLACE_FILE = "ris-in-place.json"
"""Written into ``images/`` instead of the images when the collection is catalogued in place (``data.in_place``):
it records the folder the catalogue's paths are relative to."""
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
        progress: Show progress (a bar on a terminal, log lines otherwise).

    Returns:
        A table with columns ``path`` (POSIX, relative to ``root``), ``class``, ``sha256``, ``bytes`` (file size),
        ``width`` and ``height``, sorted by path; and the skipped files as ``{"path": ..., "reason": ...}`` (files
        directly in ``root``, non-image suffixes, undecodable or truncated images). Hidden files and folders are
        ignored silently.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist or is not a folder")
    started = time.perf_counter()
    files = _list_files(root)
    # One list per column, not one dict per row: a million rows stay a few hundred MB while scanning.
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    skipped: list[dict[str, str]] = []
    for relative in counted(files, "scan images", len(files), "files", enabled=progress):
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
        row = {"path": path, "class": relative.parts[0], "sha256": hashlib.sha256(data).hexdigest(),
               "bytes": len(data), "width": width, "height": height}
        for name in COLUMNS:
            columns[name].append(row[name])
    table = pd.DataFrame(columns, columns=COLUMNS).astype({"bytes": "int64", "width": "int64", "height": "int64"})
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


class SourceChangedError(UserFacingError, RuntimeError):
    """Images catalogued in place are gone or changed since the download stage catalogued them."""


def image_root(images_dir: Path) -> Path:
    """The folder the catalogue's paths are relative to: ``images_dir`` (the collection's ``images/``), or the source
    folder recorded there when the collection was catalogued in place.

    Raises:
        ArtifactError: the in-place record is unreadable.
    """
    record = images_dir / IN_PLACE_FILE
    if not record.is_file():
        return images_dir
    try:
        return Path(json.loads(record.read_text())["root"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{record} is unreadable ({error}): run `dvc repro -f download`") from error


def write_in_place_record(folder: Path, root: Path) -> None:
    """Make ``folder`` (the future ``images/``) say that the images are catalogued where they are, under ``root``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IN_PLACE_FILE).write_text(json.dumps({"in_place": True, "root": str(root)}, indent=2) + "\n")


def changed_files(table: pd.DataFrame, root: Path) -> list[dict[str, str]]:
    """The catalogued images under ``root`` that are missing or whose size differs from the catalogue's.

    One ``stat`` per image (about a second per 100,000 on a local disk): a cheap check that a folder catalogued in
    place is still the one catalogued. Content changes of the same size are caught when an image is read
    (extraction checks every image it embeds against its sha256). A table without sizes (older catalogues) is
    only checked for missing files.
    """
    sizes = table["bytes"].to_numpy() if "bytes" in table.columns else None
    changed = []
    for position, path in enumerate(table["path"]):
        try:
            size = os.stat(root / path).st_size
        except OSError:
            changed.append({"path": path, "reason": "missing"})
            continue
        if sizes is not None and size != sizes[position]:
            changed.append({"path": path, "reason": f"{size} bytes, catalogued with {int(sizes[position])}"})
    return changed


def check_unchanged(table: pd.DataFrame, root: Path) -> None:
    """Stop when images of a collection catalogued in place under ``root`` are missing or changed in size.

    Raises:
        SourceChangedError: naming how many changed and up to five of them, and what to run.
    """
    started = time.perf_counter()
    changed = changed_files(table, root)
    logger.info("checked %d catalogued images under %s in %.1f s: %d changed", len(table), root,
                time.perf_counter() - started, len(changed))
    if changed:
        examples = ", ".join(f"{item['path']} ({item['reason']})" for item in changed[:5])
        raise SourceChangedError(
            f"{len(changed)} of the {len(table)} images catalogued in place under {root} are missing or changed "
            f"since the download stage catalogued them, e.g. {examples}: catalogue the folder again with "
            "`dvc repro -f download` (DVC does not watch a folder catalogued in place)")
