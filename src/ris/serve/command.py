"""`ris serve`: the HTTP service and web page on the cell `dvc repro` built (``search.dim`` / ``search.index``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

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
    parser.add_argument("--processes", type=int, default=None,
                        help="serving processes, each with its own model and searcher (default: one per core); "
                             "they share the port, the memory-mapped index and the additions")
    parser.add_argument("--workers", type=int, default=None,
                        help="searches computed side by side in each process, one torch thread each (default: one "
                             "per core, so that a process given more connections than another still uses every core)")
    parser.add_argument("--no-compile", action="store_true",
                        help="serve the eager model (by default it is compiled at start: about 2x faster here, "
                             "after 20-30 s of compiling)")
    parser.add_argument("--read-only", action="store_true",
                        help="refuse POST /images (by default added images go to data.additions)")
    parser.add_argument("--params", default="params.yaml", help="the pipeline's config (default: params.yaml)")
    return parser.parse_args(list(argv))


ARGV_ENV = "RIS_SERVE_ARGV"
"""How `ris serve --processes N` hands its arguments to the processes uvicorn starts (they import the factory)."""


def build_app(args: argparse.Namespace) -> FastAPI:
    """One serving process: thread limits, the searcher (loaded once, compiled unless ``--no-compile``), the app."""
    import torch
    from threadpoolctl import threadpool_limits

    from ris.search.searcher import Searcher

    # One thread per search for torch and BLAS alike: two pools of two threads on two cores measured 64 ms a query
    # back to back (forward p95 111 ms), one of them at one thread fixed it; parallelism comes from the workers.
    torch.set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    cfg = read_params(args.params)
    searcher = (Searcher.from_finetuned(cfg, args.finetuned) if args.finetuned
                else Searcher.from_pipeline(cfg, args.dim, args.index))
    if not args.no_compile:
        started = time.perf_counter()
        refused = searcher.embedder.compile()
        if refused is None:
            log.info("compiled the model in %.1f s", time.perf_counter() - started)
        else:
            log.warning("serving the eager model: %s", refused)
    # One per core in every process: the kernel hands keep-alive connections to the processes unevenly (8 clients
    # over 2 processes with 1 worker each measured 1.28x-1.75x one client's rate from run to run; with 2 each,
    # 1.62x-1.77x).
    workers = args.workers or max(1, len(os.sched_getaffinity(0)))
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), workers=workers)
    additions, read_only_reason = None, "the service was started with --read-only"
    if cfg.data.in_place:
        read_only_reason = ("the collection is catalogued in place (data.in_place): add images to its source "
                            "folder, then run `dvc repro -f download`")
    elif not args.read_only:
        additions = Additions(Path(cfg.data.additions).resolve(), tuple(cfg.data.exclude_classes))
    log.info("process %d serves %s (%d images) with %d search worker(s); %s", os.getpid(), searcher.description,
             searcher.size, workers,
             f"POST /images adds to {additions.folder}" if additions else f"read-only: {read_only_reason}")
    return create_app(searcher, limits, additions, read_only_reason)


def processes_of(args: argparse.Namespace) -> int:
    return args.processes or max(1, len(os.sched_getaffinity(0)))


def app_from_environment() -> FastAPI:
    """The app of one of several serving processes (uvicorn's factory, run in each process it starts)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return build_app(parse_args(json.loads(os.environ[ARGV_ENV])))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    processes = processes_of(args)
    log.info("serving on http://%s:%d with %d process(es)", args.host, args.port, processes)
    if processes == 1:
        uvicorn.run(build_app(args), host=args.host, port=args.port, log_level="info")
        return 0
    # Separate processes, not more threads: each has its own Python interpreter lock. On the 2-core development
    # machine two processes served 8 clients at 2.15x one client's rate, one process with two threads at 1.3x.
    os.environ[ARGV_ENV] = json.dumps(list(argv))
    uvicorn.run("ris.serve.command:app_from_environment", factory=True, workers=processes, host=args.host,
                port=args.port, log_level="info")
    return 0
