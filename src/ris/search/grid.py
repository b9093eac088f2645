"""Result grids: the query image and its nearest neighbours as captioned thumbnails in one PNG (Pillow only)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 160
"""Default thumbnail edge in pixels."""
COLUMNS = 6
"""Default tiles per row."""
PADDING = 10
"""Gap between tiles and around the grid; the query's border is drawn inside it."""
CAPTION_LINES = 2
"""Caption lines drawn under a tile; further lines are dropped (the last kept one ends with an ellipsis)."""
QUERY_COLOUR = (214, 39, 40)
"""Border and label colour that marks the query tile."""
QUERY_BORDER = 4
"""Width of the query tile's border in pixels (at most half of PADDING, so neighbours stay clear of it)."""
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
ELLIPSIS = "…"
"""Marks a shortened caption line; Pillow's bitmap fallback font is Latin-1 only, so it gets "..." instead."""

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class GridTile:
    """One tile of a result grid: an image and the caption under it (at most two lines, separated by ``\\n``)."""

    image: Image.Image
    caption: str


def render_result_grid(
    query: GridTile, results: Sequence[GridTile], *, tile: int = TILE, columns: int = COLUMNS
) -> Image.Image:
    """Draw the query and its results, in rank order, as a grid of captioned thumbnails on white.

    Each image is scaled, aspect kept, to fit ``tile`` x ``tile`` and centred on white; its caption is drawn under
    it, each line shortened with an ellipsis to the tile's width. The query comes first, framed and labelled in
    :data:`QUERY_COLOUR`. Rows hold ``columns`` tiles; a grid with fewer tiles is only as wide as it needs.

    Args:
        query: The searched image and its caption.
        results: The neighbours, best first.
        tile: Thumbnail edge in pixels.
        columns: Tiles per row.

    Returns:
        A new RGB image of ``PADDING + cols * (tile + PADDING)`` by ``PADDING + rows * (tile + caption + PADDING)``
        pixels, where ``cols = min(columns, tiles)`` and ``rows = ceil(tiles / columns)``.

    Raises:
        ValueError: ``tile`` or ``columns`` is below 1.
    """
    if tile < 1 or columns < 1:
        raise ValueError(f"tile and columns must be at least 1, got tile={tile}, columns={columns}")
    tiles = [query, *results]
    font = _load_font(max(10, tile // 13))
    line_height = _line_height(font)
    caption_height = CAPTION_LINES * line_height + PADDING // 2
    cell_width, cell_height = tile + PADDING, tile + caption_height + PADDING
    grid_columns, grid_rows = min(columns, len(tiles)), math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (PADDING + grid_columns * cell_width, PADDING + grid_rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for index, item in enumerate(tiles):
        left = PADDING + (index % columns) * cell_width
        top = PADDING + (index // columns) * cell_height
        grid.paste(_thumbnail(item.image, tile), (left, top))
        is_query = index == 0
        if is_query:
            _mark_query(draw, left, top, tile, font)
        colour = QUERY_COLOUR if is_query else TEXT_COLOUR
        for line_index, line in enumerate(_caption_lines(draw, item.caption, font, tile)):
            x = left + (tile - draw.textlength(line, font=font)) / 2
            y = top + tile + PADDING // 2 + line_index * line_height
            draw.text((x, y), line, font=font, fill=colour)
    return grid


def save_result_grid(
    path: Path, query: GridTile, results: Sequence[GridTile], *, tile: int = TILE, columns: int = COLUMNS
) -> Path:
    """Render a result grid (see :func:`render_result_grid`) and write it as a PNG, atomically.

    The PNG is written to a hidden sibling and renamed over ``path``, so readers never see half a file; parent
    folders are created.

    Args:
        path: Where to write the PNG.
        query: The searched image and its caption.
        results: The neighbours, best first.
        tile: Thumbnail edge in pixels.
        columns: Tiles per row.

    Returns:
        ``path``.
    """
    path = Path(path)
    grid = render_result_grid(query, results, tile=tile, columns=columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        grid.save(partial, format="PNG")  # explicit: the .partial suffix says nothing about the format
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _load_font(size: int) -> Font:
    """Pillow's built-in font at ``size`` pixels, or its fixed-size bitmap font where sizes are unsupported."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 takes no size; without FreeType it cannot scale
        return ImageFont.load_default()


def _line_height(font: Font) -> int:
    """Pixels from one caption line's top to the next's: the tallest glyphs plus a little air."""
    _, _, _, bottom = font.getbbox("Ag|")
    return int(math.ceil(bottom)) + 2


def _thumbnail(image: Image.Image, tile: int) -> Image.Image:
    """Scale ``image`` (up or down, aspect kept) to fit ``tile`` x ``tile``, centred on white."""
    fitted = ImageOps.contain(image.convert("RGB"), (tile, tile), method=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (tile, tile), BACKGROUND)
    canvas.paste(fitted, ((tile - fitted.width) // 2, (tile - fitted.height) // 2))
    return canvas


def _mark_query(draw: ImageDraw.ImageDraw, left: int, top: int, tile: int, font: Font) -> None:
    """Frame the query tile and label it "query", so it stands apart from the results."""
    border = min(QUERY_BORDER, PADDING // 2)
    # The frame sits in the padding around the thumbnail, so it hides none of the image.
    draw.rectangle(
        (left - border, top - border, left + tile + border - 1, top + tile + border - 1),
        outline=QUERY_COLOUR,
        width=border,
    )
    label = "query"
    label_left, label_top, label_right, label_bottom = draw.textbbox((0, 0), label, font=font)
    box = (left, top, left + label_right - label_left + 6, top + label_bottom - label_top + 4)
    draw.rectangle(box, fill=QUERY_COLOUR)
    draw.text((left + 3 - label_left, top + 2 - label_top), label, font=font, fill=BACKGROUND)


def _caption_lines(draw: ImageDraw.ImageDraw, caption: str, font: Font, width: int) -> list[str]:
    """Split ``caption`` into at most CAPTION_LINES lines, each shortened with an ellipsis to fit ``width``."""
    ellipsis = ELLIPSIS
    if not isinstance(font, ImageFont.FreeTypeFont):
        # The bitmap font cannot encode other characters; drawing them would raise UnicodeEncodeError.
        caption = caption.encode("latin-1", "replace").decode("latin-1")
        ellipsis = "..."
    lines = caption.splitlines() or [""]
    kept = lines[:CAPTION_LINES]
    if len(lines) > CAPTION_LINES:
        kept[-1] += ellipsis  # say that something was dropped; _fit keeps the ellipsis if it must cut further
    return [_fit(draw, line, font, width, ellipsis) for line in kept]


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int, ellipsis: str) -> str:
    """Return ``text``, or its longest prefix followed by ``ellipsis``, that is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    base = text.removesuffix(ellipsis)
    # Binary search over prefix lengths: text width grows with length, and captions can be long paths.
    low, high = 0, len(base)
    while low < high:
        middle = (low + high + 1) // 2
        if draw.textlength(base[:middle].rstrip() + ellipsis, font=font) <= width:
            low = middle
        else:
            high = middle - 1
    return base[:low].rstrip() + ellipsis
