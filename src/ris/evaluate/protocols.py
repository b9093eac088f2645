"""Evaluation protocols: which images query, and which form the gallery they search.

A protocol registers itself here (``register_protocol``); the config names protocols in ``eval.protocols``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuerySet:
    """Row numbers of the feature store: ``queries`` search ``gallery``.

    With ``leave_one_out`` the queries are gallery members and each query's own row is excluded from its results.
    """

    queries: np.ndarray
    gallery: np.ndarray
    leave_one_out: bool

    def gallery_is_everything(self, rows: int) -> bool:
        """Whether the gallery is all ``rows`` in order (then the stored index of the whole collection serves)."""
        return len(self.gallery) == rows and bool((self.gallery == np.arange(rows)).all())


def sample_queries(query_set: QuerySet, size: int | None, seed: int) -> QuerySet:
    """At most ``size`` of the set's queries, a seeded sample kept in row order; the gallery is unchanged."""
    if size is None or len(query_set.queries) <= size:
        return query_set
    chosen = np.sort(np.random.default_rng(seed).choice(len(query_set.queries), size=size, replace=False))
    return QuerySet(query_set.queries[chosen], query_set.gallery, query_set.leave_one_out)


@dataclass(frozen=True)
class Protocol:
    """A named way to pick queries and gallery from the collection's labels and (when needed) its split."""

    name: str
    about: str
    needs_split: bool
    select: Callable[[np.ndarray, np.ndarray | None], QuerySet]


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Make ``protocol`` available under its name."""
    if protocol.name in PROTOCOLS:
        raise ValueError(f"protocol {protocol.name!r} is registered twice")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def _book(labels: np.ndarray, splits: np.ndarray | None) -> QuerySet:
    everything = np.arange(len(labels))
    return QuerySet(everything, everything, leave_one_out=True)


def _heldout(labels: np.ndarray, splits: np.ndarray | None) -> QuerySet:
    if splits is None:
        raise ValueError("the heldout protocol needs the collection's split")
    queries = np.flatnonzero(splits == "test")
    gallery = np.flatnonzero(splits != "test")
    if not len(queries) or not len(gallery):
        raise ValueError(f"the split has {len(queries)} test and {len(gallery)} train+val images; both must be > 0")
    return QuerySet(queries, gallery, leave_one_out=False)


BOOK = register_protocol(Protocol(
    "book", "every image of the collection queries all the others (itself excluded), as in the book's chapter 4",
    needs_split=False, select=_book))
HELDOUT = register_protocol(Protocol(
    "heldout", "the split's test images query a gallery of its train and val images", needs_split=True,
    select=_heldout))


def unseen_classes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(training classes, query classes)``: the sorted class names cut in two, the first half for training (the
    deep metric learning convention, e.g. CUB-200's first 100 classes)."""
    classes = np.unique(labels)
    return classes[:len(classes) // 2], classes[len(classes) // 2:]


def _unseen_classes(labels: np.ndarray, splits: np.ndarray | None) -> QuerySet:
    _, query_classes = unseen_classes(labels)
    members = np.flatnonzero(np.isin(labels, query_classes))
    if len(members) < 2:
        raise ValueError(f"the unseen-classes protocol needs at least two images of classes {list(query_classes)}")
    return QuerySet(members, members, leave_one_out=True)


UNSEEN_CLASSES = register_protocol(Protocol(
    "unseen-classes", "every image of the second half of the classes (sorted by name) queries all the others of "
    "that half, itself excluded; a fine-tune trains on the first half only", needs_split=False,
    select=_unseen_classes))
