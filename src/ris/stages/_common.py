"""What every stage entry point does the same way: arguments, config loading, logging."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ris.config import Config, read_params

log = logging.getLogger("ris.stages")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def parse_stage_args(stage: str, argv: Sequence[str] | None, *, cell: bool = False,
                     dim_only: bool = False) -> argparse.Namespace:
    """``--params`` for every stage; ``--dim`` (and ``--index``) for the grid stages."""
    parser = argparse.ArgumentParser(prog=f"ris stage {stage}")
    parser.add_argument("--params", default="params.yaml", help="the composed config (default: params.yaml)")
    if cell or dim_only:
        parser.add_argument("--dim", required=True, help="grid dimension: an integer or 'full'")
    if cell:
        parser.add_argument("--index", required=True, help="grid index: a key of 'indexes'")
    return parser.parse_args(argv)


def load_stage_config(args: argparse.Namespace, *, check_model: bool = False) -> Config:
    """Read and validate params.yaml (``check_model``: also that the backbone is a timm model)."""
    setup_logging()
    return read_params(args.params, check_model=check_model)


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Log how long ``what`` took."""
    started = time.perf_counter()
    yield
    log.info("%s took %.1f s", what, time.perf_counter() - started)
