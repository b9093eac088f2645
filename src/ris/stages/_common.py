"""What every stage entry point does the same way: arguments, config loading, logging, one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ris.config import Config, read_config_file, with_backbone
from ris.errors import UserFacingError

log = logging.getLogger("ris.stages")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def parse_stage_args(stage: str, argv: Sequence[str] | None, *, backbone: bool = False, dim: bool = False,
                     index: bool = False) -> argparse.Namespace:
    """``--params`` for every stage; ``--backbone`` (and ``--dim``, ``--index``) for the grid stages."""
    parser = argparse.ArgumentParser(prog=f"ris stage {stage}")
    parser.add_argument("--params", default="params.yaml", help="the composed config (default: params.yaml)")
    if backbone:
        parser.add_argument("--backbone", default=None,
                            help="a backbone of grid.backbones (default: the primary backbone)")
    if dim:
        parser.add_argument("--dim", required=True, help="grid dimension: an integer or 'full'")
    if index:
        parser.add_argument("--index", required=True, help="grid index: a key of 'indexes'")
    return parser.parse_args(argv)


def load_stage_config(args: argparse.Namespace) -> Config:
    """Read params.yaml and check it against the schema (stages that use registries check those themselves).

    With ``--backbone``, that backbone of the grid takes the place of ``backbone``, so the stage reads and writes
    its paths."""
    setup_logging()
    cfg = read_config_file(args.params)
    name = getattr(args, "backbone", None)
    return cfg if name is None else with_backbone(cfg, name)


def stage_main(stage: str, body: Callable[[], object]) -> None:
    """Run a stage; a problem the user fixes (config, missing input, damaged artifact) is one line, exit 1."""
    try:
        body()
    except UserFacingError as error:
        if os.environ.get("RIS_DEBUG") == "1":
            raise
        sys.exit(f"ris stage {stage}: {error}")


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Log how long ``what`` took."""
    started = time.perf_counter()
    yield
    log.info("%s took %.1f s", what, time.perf_counter() - started)
