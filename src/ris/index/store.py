"""The index store: a built index, saved with a description of its family, settings and what it was built from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ris.artifacts import REBUILD, ArtifactError, check_built_from, read_description, write_description
from ris.config import IndexConfig
from ris.index.base import NearestNeighbourIndex, as_float32
from ris.index.registry import index_family
from ris.index.tuning import build_at_operating_point
from ris.locks import locked

DESCRIPTION_FILE = "index.json"
FORMAT = "ris.index"
FORMAT_VERSION = 1


@dataclass
class IndexStore:
    """An index over a reduced feature matrix, its build time, and its provenance.

    ``built_from`` names the inputs (backbone, feature-store key, dimension); loading checks them against what the
    caller expects. ``index_bytes`` is the footprint on disk, known once the store has been saved. ``tuning`` says
    which query-time setting the operating point chose, and the recall of each setting tried (None: untuned).
    """

    index: NearestNeighbourIndex
    built_from: dict[str, Any]
    build_seconds: float
    index_bytes: int | None = None
    tuning: dict[str, Any] | None = None

    @classmethod
    def build(cls, vectors: np.ndarray, spec: IndexConfig, built_from: dict[str, Any]) -> IndexStore:
        """Build the ``spec`` family over ``vectors`` (one row per item) and time it, and set it to the operating
        point ``spec`` names (tuning untimed, :func:`build_at_operating_point`); ``built_from`` names the vectors
        (a reduced store's ``built_from`` plus the catalogue key of ``spec``)."""
        vectors = as_float32(vectors)
        index = index_family(spec.family)(vectors.shape[1], spec.metric, **spec.params)
        build_seconds, tuning = build_at_operating_point(index, vectors, spec.operating_point)
        return cls(index, dict(built_from), build_seconds, tuning=None if tuning is None else tuning.describe())

    def save(self, folder: Path) -> None:
        """Write the index files and ``index.json`` into ``folder``; measures ``index_bytes``."""
        self.index.save(folder)
        self.index_bytes = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        write_description(folder / DESCRIPTION_FILE, FORMAT, FORMAT_VERSION, {
            "family": self.index.name, "metric": self.index.metric, "params": self.index.params,
            "dim": self.index.dim, "size": len(self.index), "built_from": self.built_from,
            "build_seconds": self.build_seconds, "index_bytes": self.index_bytes, "tuning": self.tuning})

    @classmethod
    def load(cls, folder: Path, expect: dict[str, Any] | None = None, remedy: str = REBUILD) -> IndexStore:
        """Open the index in ``folder``, checking its description, its provenance against ``expect`` and its size.

        Raises:
            ArtifactError: the folder is missing, of another format, built from other inputs, or damaged.
        """
        with locked(folder, exclusive=False):  # never half of one version and half of the next
            return cls._load(folder, expect, remedy)

    @classmethod
    def _load(cls, folder: Path, expect: dict[str, Any] | None, remedy: str) -> IndexStore:
        path = folder / DESCRIPTION_FILE
        description = read_description(path, FORMAT, FORMAT_VERSION, remedy)
        check_built_from(path, description, expect, remedy)
        try:
            index = index_family(description["family"]).load(folder, description["dim"], description["metric"],
                                                             description["params"])
        except Exception as error:  # each library fails in its own way on a damaged file
            raise ArtifactError(f"{folder}: the {description['family']} index cannot be read ({error}): "
                                f"{remedy}") from error
        if len(index) != description["size"]:
            raise ArtifactError(f"{folder}: the index holds {len(index)} items, its description says "
                                f"{description['size']}: {remedy}")
        return cls(index, description["built_from"], description["build_seconds"], description["index_bytes"],
                   description.get("tuning"))
