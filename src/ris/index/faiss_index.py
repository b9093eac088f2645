"""faiss indexes from a factory string (``"IVF256,Flat"``, ``"IVF256,PQ16"``, ``"HNSW32"``, ``"Flat"``), one family.

The factory string names the structure and is written verbatim in every report, as faiss's ``index_factory``
does; ``nprobe`` (IVF lists visited per query) and ``ef_search`` (HNSW candidate list) trade speed for recall at
query time. Training (IVF's coarse centroids, PQ's codebooks) uses at most ``train_size`` seeded vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from ris.config import ConfigError
from ris.index.base import NearestNeighbourIndex, as_float32
from ris.index.registry import register_index

INDEX_FILE = "faiss.index"


@register_index
class FaissIndex(NearestNeighbourIndex):
    """Any faiss CPU index built by ``faiss.index_factory`` under L2; angular search L2-normalises first."""

    name: ClassVar[str] = "faiss"
    defaults: ClassVar[dict[str, Any]] = {"factory": "IVF256,Flat", "nprobe": 8, "ef_search": 64,
                                          "train_size": 100_000, "seed": 0}

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._index = faiss.index_factory(dim, str(self.params["factory"]), faiss.METRIC_L2)
        self._pending: list[np.ndarray] = []

    def add(self, vectors: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        if self._index.is_trained:
            self._index.add(vectors)
        else:
            self._pending.append(vectors)  # kept until finalize trains on them

    def finalize(self) -> None:
        self._set_search_params()
        if not self._pending:
            return
        vectors = np.concatenate(self._pending)
        self._pending = []
        if not self._index.is_trained:
            rng = np.random.default_rng(int(self.params["seed"]))
            size = min(len(vectors), int(self.params["train_size"]))
            sample = vectors[np.sort(rng.choice(len(vectors), size, replace=False))]
            try:
                self._index.train(as_float32(sample))
            except RuntimeError as error:  # e.g. fewer training vectors than IVF lists
                reason = str(error).split("Error: ")[-1].splitlines()[0]
                raise ConfigError(f"faiss index {self.params['factory']!r} cannot be trained on {size} vectors "
                                  f"({reason}); set fewer IVF lists or PQ codes in its 'factory'") from error
        self._index.add(vectors)

    def _set_search_params(self) -> None:
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = int(self.params["nprobe"])
        hnsw = getattr(faiss.downcast_index(self._index), "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = int(self.params["ef_search"])

    def __len__(self) -> int:
        return int(self._index.ntotal) + sum(len(part) for part in self._pending)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        squared, ids = self._index.search(self.prepare(queries), k)
        ids = ids.astype(np.int64)
        distances = np.where(ids >= 0, np.sqrt(np.maximum(squared, 0.0)), np.inf).astype(np.float32)
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        self.finalize()
        faiss.write_index(self._index, str(folder / INDEX_FILE))

    def _load_data(self, folder: Path) -> None:
        self._index = faiss.read_index(str(folder / INDEX_FILE))
        self._set_search_params()
