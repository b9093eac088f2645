"""Nearest-neighbour indexes behind one interface; adding an algorithm is one file here and one config."""

from __future__ import annotations

import json
from pathlib import Path

from ris.index.annoy_index import AnnoyIndex
from ris.index.base import NearestNeighbourIndex
from ris.index.brute import BruteForceIndex

INDEX_CLASSES: dict[str, type[NearestNeighbourIndex]] = {cls.name: cls for cls in (BruteForceIndex, AnnoyIndex)}


def index_class(name: str) -> type[NearestNeighbourIndex]:
    """The index class registered under ``name``."""
    if name not in INDEX_CLASSES:
        raise KeyError(f"unknown index '{name}'; known: {', '.join(INDEX_CLASSES)}")
    return INDEX_CLASSES[name]


def load_index(folder: Path) -> NearestNeighbourIndex:
    """Load whichever index :meth:`NearestNeighbourIndex.save` wrote into ``folder``."""
    name = json.loads((folder / "index.json").read_text())["name"]
    return index_class(name).load(folder)


__all__ = ["AnnoyIndex", "BruteForceIndex", "INDEX_CLASSES", "NearestNeighbourIndex", "index_class", "load_index"]
