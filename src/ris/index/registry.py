"""The registry of index families: each family registers itself where it is defined (``@register_index``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ris.index.base import NearestNeighbourIndex

IndexType = TypeVar("IndexType", bound="type[NearestNeighbourIndex]")

INDEX_FAMILIES: dict[str, type[NearestNeighbourIndex]] = {}
"""Family name -> index class; filled by importing :mod:`ris.index`."""


class UnknownSettingError(ValueError):
    """A family was given a setting it does not have."""

    def __init__(self, family: str, setting: str, allowed: list[str]) -> None:
        super().__init__(f"'{setting}' is not a setting of '{family}'; allowed: {', '.join(allowed) or 'none'}")
        self.setting = setting
        self.allowed = allowed


def register_index(cls: IndexType) -> IndexType:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in INDEX_FAMILIES:
        raise ValueError(f"index family {cls.name!r} is registered twice")
    INDEX_FAMILIES[cls.name] = cls
    return cls


def index_family(name: str) -> type[NearestNeighbourIndex]:
    """The index class registered under ``name``."""
    if name not in INDEX_FAMILIES:
        raise KeyError(f"unknown index family '{name}'; known: {', '.join(INDEX_FAMILIES)}")
    return INDEX_FAMILIES[name]

