"""What every pipeline artifact (feature store, reduced features, index) shares: a JSON description of what it is
and what it was built from, written beside its data and checked when it is loaded.

A store made for other inputs, or from an older format, fails on load with a message that names the file, what
differs and what to run, instead of turning into a wrong number later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ris.errors import UserFacingError

REBUILD = "run `dvc repro` to rebuild it"


class ArtifactError(UserFacingError):
    """An artifact is missing, damaged, of another format version, or was built from other inputs."""


def write_description(path: Path, kind: str, version: int, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with the artifact's ``kind`` and format ``version`` as ``path`` (JSON)."""
    description = {"format": kind, "format_version": version, **payload}
    path.write_text(json.dumps(description, indent=2, sort_keys=True, default=str) + "\n")


def read_description(path: Path, kind: str, version: int, remedy: str = REBUILD) -> dict[str, Any]:
    """Read and check the description at ``path``: it exists, parses, and is ``kind`` at format ``version``.

    Raises:
        ArtifactError: naming ``path`` and ``remedy``.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} not found: {remedy}")
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path} is unreadable ({error}): {remedy}") from error
    if description.get("format") != kind or description.get("format_version") != version:
        raise ArtifactError(f"{path} is {description.get('format')!r} version {description.get('format_version')}, "
                            f"not {kind!r} version {version}: {remedy}")
    return description


def check_built_from(path: Path, description: Mapping[str, Any], expected: Mapping[str, Any] | None,
                     remedy: str = REBUILD) -> None:
    """Check that the artifact was built from ``expected`` (keys of its ``built_from``), e.g. the same features.

    Raises:
        ArtifactError: listing every key that differs, with both values.
    """
    built_from = description.get("built_from", {})
    differences = [f"{key} is {built_from.get(key)!r}, expected {value!r}" for key, value in (expected or {}).items()
                   if built_from.get(key) != value]
    if differences:
        raise ArtifactError(f"{path} was built from other inputs ({'; '.join(differences)}): {remedy}")
