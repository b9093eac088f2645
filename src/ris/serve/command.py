"""`ris serve`: the HTTP service and web page on the cell `dvc repro` built (``search.dim`` / ``search.index``)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ris.checks import read_params
from ris.serve.app import Additions, ServeLimits, create_app

log = logging.getLogger("ris.serve")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ris serve", description=(
        "Serve reverse image search over HTTP: POST /search (an image upload), GET /images/{id}, GET /healthz, "
        "POST /images (add images while serving), GET /metrics, the OpenAPI docs at /docs and a web page at /."))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dim", default=None, help="which reduced dimension (default: search.dim)")
    parser.add_argument("--index", default=None, help="which index of the grid (default: search.index)")
    parser.add_argument("--finetuned", nargs="?", const="heldout", default=None, metavar="TRAINING",
                        help="serve the fine-tuned model `dvc repro` trained (its `heldout` training unless named)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default: 20)")
    parser.add_argument("--workers", type=int, default=None,
                        help="searches computed side by side, one torch thread each (default: one per core)")
    parser.add_argument("--read-only", action="store_true",
                        help="refuse POST /images (by default added images go to data.additions)")
    parser.add_argument("--params", default="params.yaml", help="the pipeline's config (default: params.yaml)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch
    import uvicorn
    from threadpoolctl import threadpool_limits

    from ris.search.searcher import Searcher

    # One thread per search for torch and BLAS alike: two pools of two threads on two cores measured 64 ms a query
    # back to back (forward p95 111 ms), one of them at one thread fixed it; parallelism comes from the workers.
    torch.set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    cfg = read_params(args.params)
    searcher = (Searcher.from_finetuned(cfg, args.finetuned) if args.finetuned
                else Searcher.from_pipeline(cfg, args.dim, args.index))
    workers = args.workers or max(1, len(os.sched_getaffinity(0)))
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), workers=workers)
    additions, read_only_reason = None, "the service was started with --read-only"
    if cfg.data.in_place:
        read_only_reason = ("the collection is catalogued in place (data.in_place): add images to its source "
                            "folder, then run `dvc repro -f download`")
    elif not args.read_only:
        additions = Additions(Path(cfg.data.additions).resolve(), tuple(cfg.data.exclude_classes))
    app = create_app(searcher, limits, additions, read_only_reason)
    log.info("serving %s (%d images) on http://%s:%d with %d search worker(s); %s", searcher.description,
             searcher.size, args.host, args.port, workers,
             f"POST /images adds to {additions.folder}" if additions else f"read-only: {read_only_reason}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
