"""Which backbone names exist: timm's registry (kept apart from weights loading, so that config checks do not make
the index and evaluate stages depend on how weights are found)."""

from __future__ import annotations

import difflib

from ris.config import ConfigError


def check_backbone_name(name: str) -> None:
    """Reject a model name timm does not know (``arch`` or ``arch.tag``), suggesting similar ones.

    Raises:
        ConfigError: naming ``backbone.name``.
    """
    import timm  # imported here: slow, and only the entry points that start work need it

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=6, cutoff=0.6)
        raise ConfigError(f"config key 'backbone.name' is {name!r}, which is not a timm model"
                          + (f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models()` lists them"))
