"""The one interface every nearest-neighbour index implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ris.index.registry import UnknownSettingError


class NearestNeighbourIndex(ABC):
    """Vectors in, ``(ids, distances)`` out; ids are row numbers in the order vectors were added.

    Subclasses declare ``name`` and the settings they accept in ``defaults``; ``metric`` is ``euclidean`` or
    ``angular`` (Euclidean distance of L2-normalised vectors, Annoy's convention).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    search_settings: ClassVar[tuple[str, ...]] = ()
    """The settings that change at query time, without a rebuild (``ef``, ``nprobe``, ``search_k``)."""

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        self.check_params(params)
        self.dim = dim
        self.metric = metric
        self.params = {**self.defaults, **params}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Reject settings this family does not know.

        Raises:
            UnknownSettingError: naming the setting and the allowed ones.
        """
        for name in params:
            if name not in cls.defaults:
                raise UnknownSettingError(cls.name, name, list(cls.defaults))

    @classmethod
    def build(cls, vectors: np.ndarray, metric: str = "euclidean", **params: Any) -> NearestNeighbourIndex:
        """Create an index over ``vectors`` (one row per item)."""
        index = cls(vectors.shape[1], metric, **params)
        index.add(vectors)
        index.finalize()
        return index

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append ``vectors``; their ids continue from the current size."""

    def accepts_rows_later(self) -> bool:
        """Whether :meth:`add_rows` works, also after the index is searchable (then tuning holds its queries out of
        the build, :mod:`ris.index.tuning`)."""
        return False

    def add_rows(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` under the given row ``ids`` (each row once, all rows before the index is used)."""
        raise NotImplementedError(f"the {self.name} family adds rows in order only")

    def finalize(self) -> None:  # noqa: B027 (optional hook: exact search needs no finishing)
        """Make the index searchable after the last ``add`` (a no-op for exact search)."""

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Rows as the index stores and searches them: float32, C-contiguous, L2-normalised for ``angular``."""
        if self.metric == "euclidean" and is_ready(vectors):
            return vectors  # the common case of a single query: no numpy call at all (a search takes ~10 us)
        vectors = as_float32(np.atleast_2d(vectors))
        return as_float32(l2_normalize(vectors)) if self.metric == "angular" else vectors

    def set_search_params(self, **params: Any) -> None:
        """Change query-time settings (names from ``search_settings``) of a built index.

        Raises:
            UnknownSettingError: a name that is not a query-time setting of this family.
        """
        for name in params:
            if name not in self.search_settings:
                raise UnknownSettingError(self.name, name, list(self.search_settings))
        self.params.update(params)
        self._apply_search_params()

    def _apply_search_params(self) -> None:  # noqa: B027 (optional hook: exact families have nothing to apply)
        """Hand ``self.params``'s query-time settings to the library (families with ``search_settings``)."""

    def search_ladder(self, k: int) -> list[dict[str, Any]]:
        """Query-time settings to try, from the fastest (least exact) to the most exact, for ``k`` neighbours.

        Empty for exact families. Tuning to a target recall walks it (:mod:`ris.index.tuning`); so do the
        recall-QPS sweeps of `ris bench search`.
        """
        return []

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` nearest ids and distances for every query row, nearest first (-1 pads missing)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of indexed vectors."""

    @abstractmethod
    def _save_data(self, folder: Path) -> None:
        """Write the algorithm's own files into ``folder``."""

    @abstractmethod
    def _load_data(self, folder: Path) -> None:
        """Read what ``_save_data`` wrote."""

    def save(self, folder: Path) -> None:
        """Write the family's own files into ``folder`` (its description is the :class:`IndexStore`'s job)."""
        folder.mkdir(parents=True, exist_ok=True)
        self._save_data(folder)

    @classmethod
    def load(cls, folder: Path, dim: int, metric: str, params: dict[str, Any]) -> NearestNeighbourIndex:
        """Read the files :meth:`save` wrote, for an index of ``dim`` dimensions with these settings."""
        index = cls(dim, metric, **params)
        index._load_data(folder)
        return index


def is_ready(vectors: np.ndarray) -> bool:
    """Already a C-contiguous float32 matrix (what every backend takes as is)."""
    return vectors.ndim == 2 and vectors.dtype == np.float32 and vectors.flags.c_contiguous


def as_float32(vectors: np.ndarray) -> np.ndarray:
    """C-contiguous float32 copy-free view where possible (what every backend wants)."""
    return np.ascontiguousarray(vectors, dtype=np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
