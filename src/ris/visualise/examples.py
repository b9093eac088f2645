"""Good and bad queries, drawn as result grids: what a user would see for the collection's best and worst cases.

Queries are the held-out protocol's (the split's test images) searching the train and val images, by exact search
at the served dimension, in the served index's metric: the question the heldout metrics answer, shown instead of
averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ris.evaluate.protocols import PROTOCOLS
from ris.images import open_image
from ris.index.brute import BruteForceIndex
from ris.search.grid import GridTile, render_result_grid


@dataclass(frozen=True)
class Example:
    """One query (a row of the collection) and its ``k`` nearest gallery rows, best first."""

    query: int
    neighbours: list[int]
    distances: list[float]
    precision: float  # share of the neighbours in the query's class


def rank_queries(vectors: np.ndarray, labels: np.ndarray, splits: np.ndarray, k: int,
                 metric: str = "euclidean") -> list[Example]:
    """Every held-out query's ``k`` nearest train/val rows (exact search in ``metric``, the served index's) and its
    precision@k; ``k`` is capped at the gallery's size."""
    query_set = PROTOCOLS["heldout"].select(labels, splits)
    k = min(k, len(query_set.gallery))
    index = BruteForceIndex(vectors.shape[1], metric)
    index.add(np.ascontiguousarray(vectors[query_set.gallery], dtype=np.float32))
    ids, distances = index.search(np.ascontiguousarray(vectors[query_set.queries], dtype=np.float32), k)
    neighbours = query_set.gallery[ids]
    hits = labels[neighbours] == labels[query_set.queries][:, None]
    return [Example(int(query), [int(row) for row in found], [float(value) for value in far], float(hit.mean()))
            for query, found, far, hit in zip(query_set.queries, neighbours, distances, hits, strict=True)]


def pick(examples: Sequence[Example], labels: np.ndarray, count: int, *, best: bool) -> list[Example]:
    """``count`` examples of distinct classes: the most precise (closest first among equals) with ``best``, else
    the least precise (the most confident mistakes first: closest wrong neighbours)."""
    def order(example: Example) -> tuple[float, float]:
        return (-example.precision if best else example.precision, float(np.mean(example.distances)))

    chosen: list[Example] = []
    seen: set[str] = set()
    for example in sorted(examples, key=order):
        name = str(labels[example.query])
        if name not in seen:
            chosen.append(example)
            seen.add(name)
        if len(chosen) == count:
            break
    return chosen


def draw_examples(examples: Sequence[Example], rows: pd.DataFrame, images_dir: Path, path: Path,
                  *, tile: int = 128) -> Path:
    """The examples' result grids stacked into one PNG: each row a query (framed) and its neighbours."""
    grids = []
    for example in examples:
        query = rows.iloc[example.query]
        tiles = [GridTile(open_image(images_dir / rows.iloc[row]["path"]),
                          f"{rows.iloc[row]['class']}\n{distance:.3f} · "
                          f"{'match' if rows.iloc[row]['class'] == query['class'] else 'miss'}")
                 for row, distance in zip(example.neighbours, example.distances, strict=True)]
        caption = f"{query['class']}\nprecision@{len(tiles)} = {example.precision:.2f}"
        grids.append(render_result_grid(GridTile(open_image(images_dir / query["path"]), caption), tiles,
                                        tile=tile, columns=len(tiles) + 1))
    width, height = max(grid.width for grid in grids), sum(grid.height for grid in grids)
    sheet = Image.new("RGB", (width, height), "white")
    top = 0
    for grid in grids:
        sheet.paste(grid, (0, top))
        top += grid.height
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def describe(examples: Sequence[Example], rows: pd.DataFrame) -> list[dict]:
    """The examples as JSON-ready records (paths and classes, not row numbers, so they read on their own)."""
    return [{"query": rows.iloc[example.query]["path"], "class": rows.iloc[example.query]["class"],
             "precision": example.precision,
             "results": [{"path": rows.iloc[row]["path"], "class": rows.iloc[row]["class"], "distance": distance}
                         for row, distance in zip(example.neighbours, example.distances, strict=True)]}
            for example in examples]
