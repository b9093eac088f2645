"""Progress of long loops: a tqdm bar on a terminal, and periodic log lines with rate and ETA otherwise.

A bar redrawn with carriage returns is unreadable in a log file (and tqdm writes nothing there until the loop
ends when it decides the stream is not a terminal), so a stage whose output goes to a file, as under `dvc repro`
in CI or `nohup`, logs one line every :data:`LOG_EVERY_SECONDS` instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

log = logging.getLogger("ris.progress")
T = TypeVar("T")

LOG_EVERY_ENV = "RIS_PROGRESS_SECONDS"
LOG_EVERY_SECONDS = 30.0
"""How often a loop not on a terminal logs its progress; env RIS_PROGRESS_SECONDS overrides it."""


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (where a redrawn bar reads well)."""
    return sys.stderr.isatty()


def log_interval() -> float:
    return float(os.environ.get(LOG_EVERY_ENV) or LOG_EVERY_SECONDS)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``1 h 02 min``: what a person reads in an ETA."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Counts finished work towards ``total``; shows it as a bar on a terminal, as log lines elsewhere.

    Args:
        what: What is being done, for example ``"extract mobilenetv2_100"``.
        total: How much work there is, in ``unit``.
        unit: The unit's name, plural (``"images"``).
        enabled: False shows nothing (tests, nested loops).
        every: Seconds between log lines (default: :func:`log_interval`).
        bar: False draws no bar on a terminal (where something else draws one, as Lightning does).
    """

    def __init__(self, what: str, total: int, unit: str, *, enabled: bool = True, every: float | None = None,
                 bar: bool = True) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.every = log_interval() if every is None else every
        self.done: float = 0
        self.started = self.last_logged = time.perf_counter()
        show_bar = enabled and bar and on_terminal()
        self.bar = tqdm(total=total, desc=what, unit=unit.rstrip("s") or unit) if show_bar else None
        self.logs = enabled and not on_terminal()

    def update(self, count: float = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.logs and time.perf_counter() - self.last_logged >= self.every:
            self.last_logged = time.perf_counter()
            log.info("%s", self.line())

    def line(self) -> str:
        """``extract m: 1,234 / 8,677 images (14%), 82.1 images/s, 1 min 31 s left``."""
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        left = f", {format_duration((self.total - self.done) / rate)} left" if rate > 0 and self.done < self.total else ""
        return (f"{self.what}: {self.done:,.0f} / {self.total:,} {self.unit}{share}, {rate:,.1f} {self.unit}/s"
                f"{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], what: str, total: int, unit: str, *, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items``, counting each one as a unit of :class:`Progress`."""
    with Progress(what, total, unit, enabled=enabled) as counter:
        for item in items:
            yield item
            counter.update()

