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
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_SEARCH_LADDER = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)


@register_index
class FaissIndex(NearestNeighbourIndex):
    """Any faiss CPU index built by ``faiss.index_factory`` under L2; angular search L2-normalises first."""

    name: ClassVar[str] = "faiss"
    defaults: ClassVar[dict[str, Any]] = {"factory": "IVF256,Flat", "nprobe": 8, "ef_search": 64,
                                          "train_size": 100_000, "seed": 0}
    search_settings: ClassVar[tuple[str, ...]] = ("nprobe", "ef_search")

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._index = faiss.index_factory(dim, str(self.params["factory"]), faiss.METRIC_L2)
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []  # kept until finalize trains on them

    def add(self, vectors: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        if self._index.is_trained:
            self._index.add(vectors)
        else:
            self._pending.append((vectors, None))

    def accepts_rows_later(self) -> bool:
        return faiss.try_extract_index_ivf(self._index) is not None  # IVF lists store ids; flat and HNSW do not

    def add_rows(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if not self.accepts_rows_later():
            super().add_rows(vectors, ids)
        vectors, ids = self.prepare(vectors), np.asarray(ids, dtype=np.int64)
        if self._index.is_trained:
            self._index.add_with_ids(vectors, ids)
        else:
            self._pending.append((vectors, ids))

    def finalize(self) -> None:
        self._apply_search_params()
        if not self._pending:
            return
        vectors = np.concatenate([part for part, _ in self._pending])
        given = [ids for _, ids in self._pending]
        ids = None if given[0] is None else np.concatenate(given)  # one kind per index: in order, or by id
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
        if ids is None:
            self._index.add(vectors)
        else:
            self._index.add_with_ids(vectors, ids)

    def _apply_search_params(self) -> None:
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = int(self.params["nprobe"])
        hnsw = self._hnsw()
        if hnsw is not None:
            hnsw.efSearch = int(self.params["ef_search"])

    def _hnsw(self) -> faiss.HNSW | None:
        return getattr(faiss.downcast_index(self._index), "hnsw", None)

    def search_ladder(self, k: int) -> list[dict[str, Any]]:
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:  # an IVF index (whatever its coarse quantiser): the lists it visits
            return [{"nprobe": nprobe} for nprobe in NPROBE_LADDER if nprobe < ivf.nlist] + [{"nprobe": ivf.nlist}]
        if self._hnsw() is not None:
            return [{"ef_search": ef} for ef in EF_SEARCH_LADDER if ef >= k]
        return []  # flat: exact

    def __len__(self) -> int:
        return int(self._index.ntotal) + sum(len(part) for part, _ in self._pending)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Lean on purpose: a query takes ~15 us at Caltech101 scale, and each Python or numpy call here ~0.3 us.
        # faiss's own wrapper makes a 2-D query contiguous float32. Its distances are sums of squares of stored or
        # decoded vectors; where fewer than k are found (only at the end of a row) it gives id -1 and FLT_MAX.
        if self.metric != "euclidean" or queries.ndim != 2:
            queries = self.prepare(queries)
        squared, ids = self._index.search(queries, k)
        distances = np.sqrt(squared, out=squared)
        if ids[0, -1] < 0 if len(ids) == 1 else (ids[:, -1] < 0).any():
            distances[ids < 0] = np.inf
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        self.finalize()
        faiss.write_index(self._index, str(folder / INDEX_FILE))

    def _load_data(self, folder: Path) -> None:
        self._index = faiss.read_index(str(folder / INDEX_FILE))
        self._apply_search_params()
