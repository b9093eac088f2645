"""The registry of re-ranking methods: each method registers itself where it is defined (``@register_reranker``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ris.rerank.base import Reranker

RerankerType = TypeVar("RerankerType", bound="type[Reranker]")

RERANKERS: dict[str, type[Reranker]] = {}
"""Method name -> reranker class; filled by importing :mod:`ris.rerank`."""


def register_reranker(cls: RerankerType) -> RerankerType:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in RERANKERS:
        raise ValueError(f"re-ranking method {cls.name!r} is registered twice")
    RERANKERS[cls.name] = cls
    return cls


def build_reranker(method: str, params: dict[str, Any]) -> Reranker:
    """The reranker registered under ``method``, with ``params`` (checked by the method)."""
    if method not in RERANKERS:
        raise KeyError(f"unknown re-ranking method '{method}'; known: {', '.join(RERANKERS)}")
    return RERANKERS[method](**params)
