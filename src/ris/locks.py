"""File locks that let several ris processes share one checkout: readers share, a writer waits for them.

Every published output (the prepared collection, a feature store, a reduced store, an index, the embedding cache,
the MLflow store) has a lock file beside it. Loading an output takes its lock shared, so it can never read half of
one version and half of another; publishing a new version takes it exclusive, for as long as the swap lasts.
Work that should happen once (preparing the collection, extracting one feature key) holds the lock exclusive
while it works and checks again inside it, so a second process waits and then reuses the first one's output.

The locks are ``flock(2)`` locks: the kernel drops them when a process dies, even by ``kill -9``, so a crash never
leaves a lock behind. Locks are re-entrant within a process (a shared request inside an exclusive hold is
granted). They work on local file systems; on NFS, use one checkout per machine.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("ris.locks")

_held: dict[str, bool] = {}
"""Locks this process holds: lock file -> whether exclusively (the outermost hold owns the descriptor)."""
_held_guard = threading.Lock()


def lock_file_for(path: Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it (outside the output, so DVC never hashes it)."""
    return path.parent / f".{path.name}.lock"


@contextmanager
def locked(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the lock of the output ``path`` (shared or exclusive) for the block, waiting as long as needed.

    Raises:
        RuntimeError: an exclusive lock requested while this process holds the same lock shared (a deadlock).
    """
    lock_path = lock_file_for(path)
    key = str(lock_path.resolve())
    with _held_guard:
        held_exclusive = _held.get(key)
    if held_exclusive is not None:  # already held by this process: the outer hold covers this block
        if exclusive and not held_exclusive:
            raise RuntimeError(f"{lock_path}: exclusive lock requested while this process holds it shared")
        yield
        return

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another ris process is %s it)", path,
                     "using" if exclusive else "writing")
            fcntl.flock(descriptor, mode)
        with _held_guard:
            _held[key] = exclusive
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(descriptor)  # closing releases the flock
