"""Spotify's Annoy: a forest of random-projection trees, memory-mapped from disk."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from annoy import AnnoyIndex as _Annoy

from ris.index.base import NearestNeighbourIndex, as_float32
from ris.index.registry import register_index

# Multiples of Annoy's own default search_k (n_trees * k), by about sqrt(2): at a million vectors the default finds
# under a third of the true neighbours (README, "Operating points").
SEARCH_K_FACTORS = tuple(round(2 ** (step / 2), 2) for step in range(21))  # 1 ... 1024


@register_index
class AnnoyIndex(NearestNeighbourIndex):
    """Approximate k-NN; ``n_trees`` trades build time and size for recall, the nodes inspected per query trade
    query time for recall: ``search_k`` when above 0, else ``search_k_factor * n_trees * k`` (1: Annoy's default).

    The factor is what tuning sets: it grows with the k asked for, so a deep query (MAP@R asks for hundreds) gets a
    proportional budget, as Annoy's default does, where a fixed ``search_k`` tuned at k = 10 would starve it.
    ``on_disk_build`` builds the forest in a memory-mapped file instead of memory (for collections larger than
    memory), in ``$TMPDIR`` until the index is saved."""

    name: ClassVar[str] = "annoy"
    defaults: ClassVar[dict[str, Any]] = {"n_trees": 100, "search_k": -1, "search_k_factor": 1.0, "seed": 0,
                                          "build_threads": 1, "on_disk_build": False}
    search_settings: ClassVar[tuple[str, ...]] = ("search_k", "search_k_factor")

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._annoy = _Annoy(dim, metric)
        self._annoy.set_seed(int(self.params["seed"]))
        self._size = 0
        self._apply_search_params()
        self._build_file: Path | None = None
        if self.params["on_disk_build"]:
            with tempfile.NamedTemporaryFile(prefix="ris-annoy-", suffix=".ann", delete=False) as handle:
                self._build_file = Path(handle.name)
            self._annoy.on_disk_build(str(self._build_file))  # before any add_item, as Annoy requires

    def add(self, vectors: np.ndarray) -> None:
        for row in as_float32(vectors):
            self._annoy.add_item(self._size, row)
            self._size += 1

    def finalize(self) -> None:
        self._annoy.build(int(self.params["n_trees"]), n_jobs=int(self.params["build_threads"]))

    def __len__(self) -> int:
        return self._size

    def _apply_search_params(self) -> None:
        # Read once here, not on every search: the nodes per result (or the fixed budget, when search_k > 0).
        self._search_k = int(self.params["search_k"])
        self._per_result = float(self.params["search_k_factor"]) * int(self.params["n_trees"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        search_k = self._search_k if self._search_k > 0 else int(self._per_result * k)
        # Annoy reads a query element by element: a Python list is read faster than a numpy row (a few us).
        if queries.ndim == 2 and len(queries) == 1:  # one query, the serving case: no loop, no padding to check
            ids, distances = self._annoy.get_nns_by_vector(queries[0].tolist(), k, search_k, include_distances=True)
            if len(ids) == k:
                return np.array([ids], dtype=np.int64), np.array([distances], dtype=np.float32)
        found = [self._annoy.get_nns_by_vector(query.tolist(), k, search_k, include_distances=True)
                 for query in self.prepare(queries)]
        if all(len(ids) == k for ids, _ in found):  # the usual case: one conversion per array, no padding
            return (np.array([ids for ids, _ in found], dtype=np.int64),
                    np.array([distances for _, distances in found], dtype=np.float32))
        ids = np.full((len(found), k), -1, dtype=np.int64)
        distances = np.full((len(found), k), np.inf, dtype=np.float32)
        for row, (row_ids, row_distances) in enumerate(found):
            ids[row, :len(row_ids)] = row_ids
            distances[row, :len(row_ids)] = row_distances
        return ids, distances

    def search_ladder(self, k: int) -> list[dict[str, Any]]:
        return [{"search_k": -1, "search_k_factor": factor} for factor in SEARCH_K_FACTORS]

    def _save_data(self, folder: Path) -> None:
        if self._build_file is None:
            self._annoy.save(str(folder / "annoy.ann"))
            return
        # Built on disk: the file is the index; move it in and map it from there.
        self._annoy.unload()
        shutil.move(self._build_file, folder / "annoy.ann")
        self._build_file = None
        self._load_data(folder)

    def __del__(self) -> None:
        if getattr(self, "_build_file", None) is not None:  # built on disk and never saved
            self._annoy.unload()
            self._build_file.unlink(missing_ok=True)

    def _load_data(self, folder: Path) -> None:
        self._annoy.load(str(folder / "annoy.ann"))  # memory-mapped: loading is instant at any size
        self._size = self._annoy.get_n_items()
