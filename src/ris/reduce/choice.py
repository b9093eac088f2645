"""The dimension the ``pca_sweep`` stage chose, as ``grid.dims: [auto]`` and ``search.dim: auto`` use it."""

from __future__ import annotations

import json
from pathlib import Path

from ris.artifacts import ArtifactError

REMEDY = "run `dvc repro` (the pca_sweep stage writes it)"


def read_chosen_dim(path: Path, features_key: str) -> int | None:
    """The dimension recorded in the sweep's ``choice.json`` for these features (None: the full embedding).

    Raises:
        ArtifactError: the file is missing or unreadable, or the sweep was run on other features.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} not found, and the dimension 'auto' is the PCA sweep's choice: {REMEDY}")
    try:
        choice = json.loads(path.read_text())
        dim, swept = choice["dim"], choice["features_key"]
    except (OSError, ValueError, KeyError) as error:
        raise ArtifactError(f"{path} is unreadable ({error}): {REMEDY}") from error
    if swept != features_key:
        raise ArtifactError(f"{path} is the PCA sweep of features {swept}, not of {features_key}: {REMEDY}")
    if dim != "full" and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ArtifactError(f"{path} holds dimension {dim!r}: {REMEDY}")
    return None if dim == "full" else dim
