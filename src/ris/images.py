"""Decode an image as people see it (upright, first frame, alpha on gray, 8-bit RGB), and list image files."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ris.errors import UserFacingError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
"""File suffixes (lower case) that :func:`list_images` keeps when it expands a folder."""

DECODING_VERSION = 1
"""Bump when :func:`open_image` decodes any image differently: it is part of every extractor key, so cached
embeddings of the old decoding are not reused."""

ALPHA_BACKGROUND = (128, 128, 128)
"""Transparent pixels are shown on neutral mid-gray: black or white would read as content to an embedding model."""


MAX_PIXELS = 50_000_000
"""Images with more pixels are refused before decoding (a 50-megapixel photo decodes to 150 MB of RGB, 200 MB with
alpha): one file must not be able to take a run's memory. Pillow's own decompression-bomb limit is higher."""

MAX_ASPECT_RATIO = 10.0
"""Images longer than 10:1 are refused before decoding. Preprocessing resizes the short side to the model's input
size, so a 20000 x 2 strip would become 2.5 million pixels wide; at 10:1 the resized image stays under ten times
the model's input area."""


class ImageReadError(UserFacingError, ValueError):
    """An image cannot be read or decoded; the message names the source and the problem in one line."""


def open_image(source: str | Path | bytes, *, name: str | None = None) -> Image.Image:
    """Open and fully decode an image into 8-bit RGB, the way an image viewer shows it.

    The EXIF orientation is applied; an animation gives its first frame; transparency is composited on
    :data:`ALPHA_BACKGROUND`; 16/32-bit integer and float grayscale are scaled to 8 bits by their bit depth (or
    value range); grayscale, palette and CMYK become RGB. Every pixel is decoded here, so truncated files fail
    here rather than later.

    Args:
        source: A file path, or the encoded file's bytes.
        name: What to call the image in error messages; defaults to the path, or ``"image"`` for bytes.

    Returns:
        A new in-memory RGB image, not tied to any open file.

    Raises:
        ImageReadError: The file is missing, is a folder or unreadable; the data is not an image, is truncated or
            corrupt; or its size is beyond :data:`MAX_PIXELS` or :data:`MAX_ASPECT_RATIO` (checked from the header,
            before decoding), or ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb?).
    """
    if isinstance(source, bytes):
        label = name or "image"
        return _decode(io.BytesIO(source), label)
    label = name or str(source)
    try:
        with open(source, "rb") as file:
            return _decode(file, label)
    except FileNotFoundError:
        raise ImageReadError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{label}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageReadError(f"{label}: permission denied") from None
    except OSError as error:  # only open() gets here: _decode turns every decoding error into ImageReadError
        raise ImageReadError(f"{label}: cannot read ({error.strerror or error})") from error


def _decode(file: BinaryIO, label: str) -> Image.Image:
    """Decode the image in ``file`` into an upright 8-bit RGB image; wrap every failure in ImageReadError."""
    try:
        # Locally escalated so a bomb is refused before decoding; catch_warnings restores the filters afterwards.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                _check_size(*image.size)  # from the header: refused before any pixel is decoded
                image.seek(0)  # the first frame of an animation (already current after open; explicit for clarity)
                # open() only reads the header; load() decodes every pixel, which is what exposes truncated files.
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{label}: {_too_large(error)}") from error
    except _SizeRefused as error:
        raise ImageReadError(f"{label}: {error}") from error
    except UnidentifiedImageError as error:
        # PIL's own message repeats the path or a BytesIO repr; the label already says which file it is.
        raise ImageReadError(f"{label}: not an image (cannot identify image file)") from error
    except Exception as error:  # PIL raises many exception types on malformed input: OSError, SyntaxError, ...
        detail = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the decoder wrote
        if "truncated" in detail.lower():
            raise ImageReadError(f"{label}: truncated image ({detail})") from error
        raise ImageReadError(f"{label}: cannot decode image ({type(error).__name__}: {detail})") from error


def _check_size(width: int, height: int) -> None:
    """Refuse empty sizes and sizes beyond :data:`MAX_PIXELS` or :data:`MAX_ASPECT_RATIO`, with the reason."""
    if width < 1 or height < 1:
        raise _SizeRefused(f"empty image ({width} x {height} pixels)")
    if width * height > MAX_PIXELS:
        raise _SizeRefused(f"too large: {width} x {height} = {width * height:,} pixels, limit {MAX_PIXELS:,}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        ratio = max(width, height) / min(width, height)
        raise _SizeRefused(f"aspect ratio {ratio:,.0f}:1 ({width} x {height} pixels) is beyond "
                           f"{MAX_ASPECT_RATIO:.0f}:1, which preprocessing cannot resize in bounded memory")


class _SizeRefused(ValueError):
    """An image size outside the decoding bounds (its message is the whole reason)."""


def _too_large(error: Exception) -> str:
    """Say how many pixels a refused image has and what the limit is, e.g. ``too large: 200,000,000 pixels, ...``."""
    limit = Image.MAX_IMAGE_PIXELS
    # PIL only reports the pixel count inside its message ("Image size (N pixels) exceeds limit of M pixels ...").
    counts = re.findall(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(counts[0]):,} pixels" if counts else "more pixels than allowed"
    limit_text = f", limit {limit:,}" if limit else ""
    return f"too large: {pixels}{limit_text} (a decompression bomb?)"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to a new 8-bit RGB image."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _to_8bit_gray(image)
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        # A tRNS chunk or a GIF transparent index: RGBA conversion turns it into a real alpha channel.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    # convert() returns a copy even for RGB, so the result never shares the (closed) file's image.
    return image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to mode L by its bit depth, not by clipping.

    PIL's own ``convert("L")`` clips these modes at 255, which turns a full-range 16-bit image nearly white.
    """
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = values.astype(np.uint32) >> 8  # 16-bit: keep the top 8 bits, 65535 -> 255
    elif image.mode == "I" and values.size and 0 <= values.min() and values.max() <= 0xFFFF:
        # Mode I does not record a bit depth; files open in it for 16-bit data (e.g. PGM with maxval 65535).
        scaled = values.astype(np.uint32) >> 8
    elif image.mode == "F" and values.size and 0.0 <= np.nanmin(values) and np.nanmax(values) <= 1.0:
        scaled = np.rint(np.nan_to_num(values) * 255.0)  # floats in 0..1, the usual convention
    else:
        scaled = _stretch(values)  # no natural depth (negative or larger values): map the value range to 0..255
    return Image.fromarray(scaled.astype(np.uint8))  # a 2-D uint8 array becomes mode L


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the finite value range of ``values`` linearly onto 0..255 (a constant image becomes 0)."""
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape)
    low, high = data[finite].min(), data[finite].max()
    span = high - low if high > low else 1.0
    return np.rint(np.clip((np.where(finite, data, low) - low) / span, 0.0, 1.0) * 255.0)


def list_images(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into the image files under them; keep every other path as given.

    Folders are walked recursively, skipping hidden files and folders (names starting with ``.``), keeping files
    whose lower-cased suffix is in :data:`IMAGE_SUFFIXES`, in sorted path order. A file path, or a path that does
    not exist, is kept whatever its suffix, so that opening it reports the problem. Duplicates are dropped, first
    occurrence kept.

    Args:
        paths: Files and folders, in the order they were given.

    Returns:
        The image paths, folders expanded in place.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(_walk_images(path))
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def _walk_images(root: Path) -> list[Path]:
    """Return the non-hidden image files under ``root``, sorted by POSIX path."""
    images: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into hidden folders (.git, .ipynb_checkpoints, ...).
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        images.extend(
            Path(folder) / name
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(images, key=lambda path: path.as_posix())
