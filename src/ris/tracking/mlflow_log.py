"""Record evaluated variants in MLflow (an embedded local store unless MLFLOW_TRACKING_URI says otherwise)."""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.parse
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ris.config import TrackingConfig
from ris.locks import locked

log = logging.getLogger("ris.tracking")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit (with ``-dirty`` when tracked code or config changed), or ``unknown`` outside git.

    ``dvc.lock`` and ``reports/`` are left out of the dirty check: `dvc repro` rewrites them between stages.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude,top)dvc.lock", ":(exclude,top)reports"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def local_store(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (``sqlite:///x.db``, ``file:...`` or a plain path), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(urllib.parse.urlsplit(uri).path)
    return None if "://" in uri else Path(uri)


def log_run(tracking: TrackingConfig, run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
            tags: Mapping[str, str], artifacts: list[Path] | None = None, *,
            curves: Mapping[str, Sequence[tuple[int, float]]] | None = None, model: Any = None,
            model_input: Any = None) -> str | None:
    """Log one run and return its id (None when tracking is disabled).

    ``curves`` are metrics with a history (name -> (step, value) pairs, e.g. a training's per-epoch losses), drawn
    as charts by the MLflow UI; ``model`` (a torch module) is logged as the run's MLflow model, with
    ``model_input`` (a numpy batch) as its input example, from which MLflow records its signature.
    """
    if not tracking.enabled:
        return None
    import mlflow  # imported here: it is slow to import and only this stage needs it

    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    store = local_store(uri)
    if uri.startswith("sqlite:///") and store is not None:
        # Absolute: MLflow caches one store per URI string, so a relative one would keep pointing at the database
        # of whichever working directory used it first in this process.
        uri = f"sqlite:///{store.resolve()}"
    # One writer at a time on a local store: MLflow's first-use database setup (an alembic migration) and
    # experiment creation race when several processes log at once.
    with locked(store, exclusive=True) if store is not None else nullcontext():
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(tracking.experiment)
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.log_params({key: str(value)[:500] for key, value in params.items()})
            mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
            mlflow.set_tags(dict(tags))
            for name, points in (curves or {}).items():
                for step, value in points:
                    mlflow.log_metric(name, float(value), step=int(step))
            for artifact in artifacts or []:
                mlflow.log_artifact(str(artifact))
            if model is not None:
                import mlflow.pytorch

                # Pickled: MLflow's traced "pt2" format fixes the batch size to the example's.
                mlflow.pytorch.log_model(model, name="model", input_example=model_input,
                                         serialization_format="pickle")
    log.info("logged MLflow run %s (%s) to %s", run.info.run_id, run_name, mlflow.get_tracking_uri())
    return run.info.run_id
