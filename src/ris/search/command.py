"""`ris search IMAGE_OR_FOLDER ...`: the k collection images most like each query, printed and drawn as a grid."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ris.checks import read_params
from ris.errors import UserFacingError
from ris.images import ImageReadError, list_images, open_image
from ris.search.grid import GridTile, save_result_grid
from ris.search.searcher import Searcher, SearchResult

DEFAULT_GRID_DIR = Path("outputs/search")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ris search", description=(
        "Find the collection images most like each query image, with the index `dvc repro` built. Queries may be "
        "any photo (any size, grayscale, PNG with alpha, EXIF-rotated); folders are searched for images."))
    parser.add_argument("queries", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    parser.add_argument("-k", type=int, default=None, help="results per query (default: search.k in params)")
    parser.add_argument("--dim", default=None, help="which reduced dimension: an integer or 'full' "
                                                    "(default: search.dim; must be one of grid.dims)")
    parser.add_argument("--index", default=None, help="which index: a key of 'indexes' built by the grid "
                                                      "(default: search.index)")
    parser.add_argument("--finetuned", nargs="?", const="heldout", default=None, metavar="TRAINING",
                        help="search with the fine-tuned model `dvc repro` trained (its `heldout` training unless "
                             "named) instead of the pretrained backbone; --dim and --index do not apply")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per query) instead of tables")
    parser.add_argument("--grid-dir", type=Path, default=DEFAULT_GRID_DIR,
                        help=f"where result-grid PNGs go (default: {DEFAULT_GRID_DIR})")
    parser.add_argument("--no-grid", action="store_true", help="do not write result-grid PNGs")
    parser.add_argument("--params", default="params.yaml", help="the pipeline's config (default: params.yaml)")
    return parser.parse_args(list(argv))


def grid_name(query: Path, taken: set[str]) -> str:
    """A PNG file name for ``query``'s grid, unique among ``taken`` (queries from two folders may share a name)."""
    name, number = f"{query.stem}.png", 1
    while name in taken:
        number += 1
        name = f"{query.stem}-{number}.png"
    taken.add(name)
    return name


def write_grid(path: Path, query_image: Image.Image, result: SearchResult) -> Path:
    """The query, then each hit with its rank, class and distance under it."""
    tiles = []
    for hit in result.hits:
        try:
            image = open_image(hit.path)
        except ImageReadError:
            continue  # a collection image removed since indexing: leave it out of the picture, not the listing
        tiles.append(GridTile(image, f"{hit.rank}. {hit.label}\nd = {hit.distance:.3f}"))
    return save_result_grid(path, GridTile(query_image, "query"), tiles)


def print_result(query: Path, result: SearchResult, decode_ms: float) -> None:
    print(f"\n{query}  (decode {decode_ms:.1f} ms, embed {result.embed_ms:.1f} ms, search {result.search_ms:.2f} ms)")
    print(f"{'rank':>4}  {'class':<24} {'distance':>9}  path")
    for hit in result.hits:
        print(f"{hit.rank:>4}  {hit.label:<24} {hit.distance:>9.4f}  {hit.path}")


def main(argv: Sequence[str]) -> int:
    """Search every query; return 0 when all succeeded, 1 when any query failed, 2 when nothing could run."""
    args = parse_args(argv)
    try:
        cfg = read_params(args.params)
        k = args.k if args.k is not None else cfg.search.k
        if k < 1:
            raise UserFacingError(f"-k is {k}; it must be a positive integer")
        if args.finetuned is not None:
            if args.dim is not None or args.index is not None:
                raise UserFacingError("--dim and --index choose a cell of the pretrained grid; the fine-tuned "
                                      "model has its own (leave them out with --finetuned)")
            searcher = Searcher.from_finetuned(cfg, args.finetuned)
        else:
            searcher = Searcher.from_pipeline(cfg, args.dim, args.index)
    except UserFacingError as error:
        print(f"ris search: {error}", file=sys.stderr)
        return 2
    queries = list_images(args.queries)
    if not queries:
        print(f"ris search: no image files in {', '.join(map(str, args.queries))}", file=sys.stderr)
        return 1
    failures, records = 0, []
    taken: set[str] = set()
    for query in queries:
        started = time.perf_counter()
        try:
            image = open_image(query)
        except ImageReadError as error:
            print(f"ris search: {error}", file=sys.stderr)
            failures += 1
            continue
        decode_ms = 1e3 * (time.perf_counter() - started)
        result = searcher.search(image, k)
        try:
            grid = None if args.no_grid else write_grid(args.grid_dir / grid_name(query, taken), image, result)
        except OSError as error:  # the results stand; only the picture could not be written
            print(f"ris search: {query}: cannot write its result grid ({error})", file=sys.stderr)
            failures, grid = failures + 1, None
        if args.json:
            records.append({"query": str(query), "index": searcher.description, "grid": str(grid) if grid else None,
                            "timings_ms": {"decode": decode_ms, "embed": result.embed_ms, "search": result.search_ms},
                            "results": [{"rank": hit.rank, "class": hit.label, "distance": hit.distance,
                                         "path": str(hit.path)} for hit in result.hits]})
        else:
            print_result(query, result, decode_ms)
            if grid:
                print(f"grid: {grid}")
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if failures else 0
