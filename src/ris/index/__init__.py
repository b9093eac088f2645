"""Nearest-neighbour indexes behind one interface; a family registers itself where it is defined, so adding one is
one module here (imported below) and one config file in ``conf/index/``."""

from __future__ import annotations

from ris.index.annoy_index import AnnoyIndex
from ris.index.base import NearestNeighbourIndex
from ris.index.brute import BruteForceIndex
from ris.index.faiss_index import FaissIndex
from ris.index.hnsw import HnswIndex
from ris.index.milvus_index import MilvusIndex
from ris.index.registry import INDEX_FAMILIES, index_family
from ris.index.sklearn_trees import BallTreeIndex, KDTreeIndex
from ris.index.store import IndexStore

__all__ = ["INDEX_FAMILIES", "AnnoyIndex", "BallTreeIndex", "BruteForceIndex", "FaissIndex", "HnswIndex", "IndexStore",
           "KDTreeIndex", "MilvusIndex", "NearestNeighbourIndex", "index_family"]
