"""render_result_grid's layout, query marking and captions; save_result_grid's atomic PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ris.search.grid import PADDING, QUERY_COLOUR, GridTile, render_result_grid, save_result_grid

WHITE = (255, 255, 255)
RED = (255, 0, 0)


def _tile(colour: tuple[int, int, int], caption: str = "caption", size: tuple[int, int] = (40, 30)) -> GridTile:
    return GridTile(Image.new("RGB", size, colour), caption)


def _results(count: int) -> list[GridTile]:
    return [_tile((20 * rank % 256, 100, 200), f"#{rank} class_{rank}\nimage_{rank:04d}.jpg") for rank in range(count)]


def _cell_size(tile: int) -> tuple[int, int]:
    """A cell's width and height, measured from one- and two-row grids rather than from the module's internals."""
    one = render_result_grid(_tile(WHITE), [], tile=tile, columns=1)
    two = render_result_grid(_tile(WHITE), _results(1), tile=tile, columns=1)
    return one.width - PADDING, two.height - one.height


@pytest.mark.parametrize(("count", "columns"), [(0, 6), (3, 6), (5, 6), (6, 6), (11, 6), (7, 3), (4, 1)])
def test_grid_size_follows_columns_and_rows(count: int, columns: int) -> None:
    tile = 64
    cell_width, cell_height = _cell_size(tile)
    assert cell_width == tile + PADDING
    assert cell_height > tile + PADDING  # room for the caption

    grid = render_result_grid(_tile(RED), _results(count), tile=tile, columns=columns)

    tiles = count + 1
    expected_columns, expected_rows = min(columns, tiles), math.ceil(tiles / columns)
    assert grid.mode == "RGB"
    assert grid.size == (PADDING + expected_columns * cell_width, PADDING + expected_rows * cell_height)


def test_query_is_framed_and_results_follow_in_rank_order() -> None:
    tile = 60
    results = [_tile((0, 0, 255)), _tile((0, 200, 0))]
    grid = render_result_grid(_tile((128, 128, 128), size=(60, 60)), results, tile=tile, columns=6)
    pixels = np.asarray(grid)
    cell_width, _ = _cell_size(tile)

    assert (pixels == QUERY_COLOUR).all(axis=-1).sum() > 4 * tile, "the query's border colour must appear"
    # Just left of the query thumbnail is its border; just left of a result is plain background.
    assert tuple(pixels[PADDING + tile // 2, PADDING - 1]) == QUERY_COLOUR
    assert tuple(pixels[PADDING + tile // 2, PADDING + cell_width - 1]) == WHITE
    # Thumbnail centres, left to right: query gray, then result 1 blue, result 2 green.
    centre_row = PADDING + tile // 2
    centres = [tuple(pixels[centre_row, PADDING + index * cell_width + tile // 2]) for index in range(3)]
    assert centres == [(128, 128, 128), (0, 0, 255), (0, 200, 0)]


def test_thumbnails_keep_aspect_on_white() -> None:
    tile = 80
    wide = _tile((0, 0, 0), size=(400, 100))  # 4:1 fits as 80 x 20, centred, white above and below
    grid = np.asarray(render_result_grid(_tile((0, 0, 0)), [wide], tile=tile))
    cell_width, _ = _cell_size(tile)
    column = PADDING + cell_width + tile // 2

    strip = grid[PADDING : PADDING + tile, column]
    dark_rows = np.flatnonzero((strip < 50).all(axis=-1))
    assert len(dark_rows) == pytest.approx(20, abs=1)
    assert dark_rows.min() == pytest.approx(30, abs=1)
    assert (strip[:25] == WHITE).all()


def test_captions_are_drawn_and_long_ones_stay_under_their_tile() -> None:
    tile = 64
    long_caption = "#1 a_really_long_class_name_that_cannot_fit\n" + "very/long/path/" * 20 + "image.jpg"
    cell_width, cell_height = _cell_size(tile)
    caption_rows = slice(PADDING + tile + 1, cell_height)
    result_columns = slice(PADDING + cell_width, PADDING + cell_width + tile)

    bare = np.asarray(render_result_grid(_tile(WHITE, caption=""), [_tile(WHITE, caption="")], tile=tile))
    captioned = np.asarray(
        render_result_grid(_tile(WHITE, caption="query\nq.jpg"), [_tile(WHITE, caption=long_caption)], tile=tile)
    )

    assert bare.shape == captioned.shape
    assert (bare[caption_rows, result_columns] == 255).all()
    assert (captioned[caption_rows, result_columns] < 128).any(), "the result's caption must be drawn under its tile"
    # Shortened with an ellipsis: nothing spills right of the tile, into the padding.
    assert (captioned[caption_rows, PADDING + cell_width + tile :] == 255).all()
    # The query's caption is drawn in the query colour (reddish: red high, green and blue low).
    query_caption = captioned[caption_rows, PADDING : PADDING + tile].astype(int)
    reddish = (query_caption[..., 0] > 150) & (query_caption[..., 1] < 100) & (query_caption[..., 2] < 100)
    assert reddish.any()


def test_save_result_grid_writes_png_atomically(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "search" / "cat.grid.png"

    returned = save_result_grid(path, _tile(RED), _results(3), tile=48, columns=2)

    assert returned == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["cat.grid.png"], "no temporary files left behind"
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        reopened.load()
        assert reopened.size == render_result_grid(_tile(RED), _results(3), tile=48, columns=2).size

    save_result_grid(path, _tile(RED), _results(1), tile=48, columns=2)  # replaces the previous grid
    assert sorted(p.name for p in path.parent.iterdir()) == ["cat.grid.png"]


def test_bad_layout_arguments() -> None:
    with pytest.raises(ValueError, match="columns"):
        render_result_grid(_tile(RED), [], columns=0)
