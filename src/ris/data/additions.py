"""Images added to the collection while it is served (`POST /images`): kept in an additions folder, one sub-folder
per class, until the download stage catalogues them with the rest of the collection.

The folder is ``data.additions`` (``data/additions`` by default; git keeps only its README). An added image is
stored with its uploaded bytes, named by its content (``<class>/<sha256 prefix>.<format suffix>``), so adding the
same image twice writes one file. The download stage copies every addition into the collection's ``images/`` at
``<class>/added/<name>``, where extraction embeds it like any other image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ris.errors import UserFacingError
from ris.images import IMAGE_SUFFIXES

ADDED_FOLDER = "added"
"""The sub-folder of a class, in the prepared collection, that holds the images added to that class."""

CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
"""What a class added through the service may be called: a plain folder name, never a path."""

SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
                    "PPM": ".ppm"}
"""The file suffix an added image gets, by the format Pillow detects in its bytes (all in IMAGE_SUFFIXES)."""

NAME_HEX_DIGITS = 16  # 64 bits of the sha256: a clash among a million images has odds of about 1 in 3e7


class AdditionError(UserFacingError, ValueError):
    """An image cannot be added: a bad class name, an unsupported format or an additions folder in the way."""


@dataclass(frozen=True)
class Addition:
    """One added image file: its class, its path relative to the additions folder, and its content hash."""

    label: str
    relative: Path
    sha256: str


def check_class_name(name: str, excluded: list[str] | tuple[str, ...] = ()) -> str:
    """``name`` if it can be a class folder of the collection.

    Raises:
        AdditionError: it is not a plain folder name, or it is a class the pipeline excludes (its images would
            never be embedded).
    """
    if not CLASS_NAME.fullmatch(name):
        raise AdditionError(f"class {name!r} is not a plain folder name: use letters, digits and _ . + - "
                            "(at most 128 characters, starting with a letter or digit)")
    if name in excluded:
        raise AdditionError(f"class {name!r} is excluded from the collection (data.exclude_classes)")
    return name


def suffix_for(data: bytes) -> str:
    """The file suffix for an image's bytes, by the format Pillow detects.

    Raises:
        AdditionError: not a format the collection keeps (see :data:`SUFFIX_OF_FORMAT`).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or "unknown"
    except (UnidentifiedImageError, OSError) as error:
        raise AdditionError("not an image (cannot identify image file)") from error
    if image_format not in SUFFIX_OF_FORMAT:
        raise AdditionError(f"format {image_format} cannot be added: the collection keeps "
                            f"{', '.join(sorted(SUFFIX_OF_FORMAT))}")
    return SUFFIX_OF_FORMAT[image_format]


def addition_path(label: str, data: bytes) -> Addition:
    """Where ``data``, added to class ``label``, is stored in the additions folder (named by its content)."""
    digest = hashlib.sha256(data).hexdigest()
    return Addition(label, Path(label) / f"{digest[:NAME_HEX_DIGITS]}{suffix_for(data)}", digest)


def write_addition(folder: Path, label: str, data: bytes) -> tuple[Addition, bool]:
    """Store an image's bytes in the additions ``folder`` under its class; return it and whether it is new.

    The file is written to a temporary name beside its final one and renamed, so a crash never leaves half an image
    for the download stage to catalogue. An identical image already there is left as it is.

    Raises:
        AdditionError: see :func:`suffix_for`, or the class's folder cannot be made.
    """
    addition = addition_path(label, data)
    target = folder / addition.relative
    if target.is_file():
        return addition, False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise AdditionError(f"{target.parent} is a file, not a class folder") from error
    handle, temporary = tempfile.mkstemp(prefix=".adding-", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return addition, True


ORDER_FILE = ".order"
"""The additions in the order they were made, one ``<class>/<file>\t<sha256>`` line each, appended under the folder's
lock. Every serving process numbers its added rows by it, so an id means the same image in all of them."""


def read_order(folder: Path) -> list[Addition]:
    """The additions in the order they were made (none when the folder or its order file does not exist)."""
    try:
        lines = (folder / ORDER_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        relative, _, digest = line.partition("\t")
        if relative and digest:  # a line cut short by a crash is not an addition
            entries.append(Addition(Path(relative).parts[0], Path(relative), digest))
    return entries


def append_order(folder: Path, additions: list[Addition]) -> None:
    """Record ``additions`` (already written) at the end of the order file, one whole line each."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ORDER_FILE, "a") as file:
        file.write("".join(f"{addition.relative.as_posix()}\t{addition.sha256}\n" for addition in additions))
        file.flush()
        os.fsync(file.fileno())


def order_version(folder: Path) -> int:
    """A number that grows with every recorded addition (the order file's size): one ``stat`` to see whether
    another process added images since."""
    try:
        return os.stat(folder / ORDER_FILE).st_size
    except FileNotFoundError:
        return 0


def list_additions(folder: Path) -> list[Path]:
    """The image files of an additions ``folder``, relative to it, sorted: ``<class>/<file>`` only.

    Files directly in the folder (its README), hidden files (temporary writes) and non-image suffixes are not
    additions. A folder that does not exist holds none.
    """
    if not folder.is_dir():
        return []
    found = [path.relative_to(folder)
             for class_dir in folder.iterdir() if class_dir.is_dir() and not class_dir.name.startswith(".")
             for path in class_dir.iterdir()
             if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda path: path.as_posix())


def copy_additions(folder: Path, image_root: Path) -> int:
    """Copy every addition into a collection's image tree (``<class>/added/<file>``); return how many.

    Raises:
        AdditionError: an addition's place in the collection is already taken by another file.
    """
    additions = list_additions(folder)
    for relative in additions:
        target = image_root / relative.parts[0] / ADDED_FOLDER / relative.name
        if target.exists():
            raise AdditionError(f"cannot add {folder / relative} to the collection: {target} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / relative, target)
    return len(additions)
