"""What every stage entry point does the same way: arguments, config loading, logging, one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ris.config import Config, read_config_file, with_backbone
from ris.errors import UserFacingError
from ris.progress import format_duration

log = logging.getLogger("ris.stages")


# Third-party lines that say nothing about this run: Lightning's hardware banners, tips and DDP set-up (INFO on
# its loggers), and warnings about how Lightning or its dependencies are written, not how ris uses them.
QUIET_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
QUIET_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of torch's pytree
    r"The '\w+_dataloader' does not have many workers",  # the config sizes workers to the machine on purpose
    r"Found \d+ module\(s\) in eval mode",  # the frozen trunk of a fine-tune is in eval mode by design
    r"Checkpoint directory .* exists and is not empty",  # a fresh temporary folder per fine-tune
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


def setup_logging() -> None:
    """INFO lines with time and source on stderr; third-party noise (:data:`QUIET_LOGGERS`,
    :data:`QUIET_WARNINGS`) left out, its warnings and errors kept."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


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


@dataclass(frozen=True)
class Done:
    """What a stage read and wrote, for its closing log line; ``detail`` is its headline (images/s, a metric)."""

    read: Sequence[Path | str]
    wrote: Sequence[Path]
    detail: str = ""


def stage_main(stage: str, body: Callable[[], Done | None]) -> None:
    """Run a stage and end with one line: what it read, what it wrote (with sizes) and how long it took.

    A problem the user fixes (config, missing input, damaged artifact) is one line instead, and exit status 1.
    """
    started = time.perf_counter()
    try:
        done = body()
    except UserFacingError as error:
        if os.environ.get("RIS_DEBUG") == "1":
            raise
        sys.exit(f"ris stage {stage}: {error}")
    if isinstance(done, Done):
        log.info("%s", closing_line(stage, done, time.perf_counter() - started))


def closing_line(stage: str, done: Done, seconds: float) -> str:
    """``stage extract done in 1 min 46 s: read a, b; wrote c (12.3 MB), d (2.1 kB); 8,677 images at ...``."""
    read = ", ".join(str(path) for path in done.read)
    wrote = ", ".join(f"{path} ({_size(path)})" for path in done.wrote)
    detail = f"; {done.detail}" if done.detail else ""
    return f"stage {stage} done in {format_duration(seconds)}: read {read}; wrote {wrote}{detail}"


def _size(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        total = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    elif path.exists():
        total = path.stat().st_size
    else:
        return "missing"
    for unit in ("B", "kB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    raise AssertionError("unreachable")


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Log how long ``what`` took."""
    started = time.perf_counter()
    yield
    log.info("%s took %.1f s", what, time.perf_counter() - started)
