"""Re-ranking: better rankings from the same index, at a measured cost in latency. A method registers itself where
it is defined, so adding one is one module here (imported below) and one config file in ``conf/rerank/``."""

from __future__ import annotations

from ris.rerank.aqe import AlphaQueryExpansion
from ris.rerank.base import InvalidSettingError, RerankedIndex, Reranker
from ris.rerank.k_reciprocal import KReciprocalReranker
from ris.rerank.registry import RERANKERS, build_reranker

__all__ = ["RERANKERS", "AlphaQueryExpansion", "InvalidSettingError", "KReciprocalReranker", "RerankedIndex",
           "Reranker", "build_reranker"]
