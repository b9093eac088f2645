"""One MLflow run per pipeline state: what `dvc repro` or `dvc exp run` produced, even when every cell was cached.

The grid's own runs are logged by the stages that compute them, so an experiment whose cells DVC restored from its
cache logged nothing. The `track` stage has no outputs (DVC never restores it from its run cache): it runs whenever
params or results change (an experiment identical to the one before it changes neither, and is that one) and logs
the experiment's headline metrics (``reports/summary.json``), every param, the config and the figures, tagged with
the git commit and the DVC experiment's name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ris.config import Config
from ris.tracking.mlflow_log import flatten, git_commit, log_run

DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for the commands it runs


def experiment_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``summary.json`` as flat MLflow metrics: ``heldout/map_at_r``, ..., ``latency_p50_us``, ``qps``."""
    metrics: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            metrics.update({f"{key}/{name}": float(number) for name, number in value.items()
                            if isinstance(number, int | float)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


def figures(reports: Path) -> list[Path]:
    """Every PNG the pipeline wrote under ``reports`` (plots, maps, result grids, curves), benchmarks left out."""
    return sorted(path for path in reports.rglob("*.png") if "bench" not in path.relative_to(reports).parts)


def log_experiment(cfg: Config, params_file: Path, reports: Path) -> str | None:
    """Log one ``kind=experiment`` run for the pipeline's current state; return its id (None when disabled)."""
    summary = json.loads((reports / "summary.json").read_text())
    params = flatten(yaml.safe_load(params_file.read_text()))
    experiment = os.environ.get(DVC_EXPERIMENT_ENV, "")
    commit = git_commit()
    tags = {"kind": "experiment", "source": "dvc", "git_commit": commit, "dvc_experiment": experiment or "workspace",
            "backbone": str(summary["backbone"]), "dim": str(summary["dim"]), "index": str(summary["index"])}
    tables = [reports / name for name in ("summary.json", "results.md", "grid.md", "backbones.md")
              if (reports / name).is_file()]
    name = f"experiment/{experiment or commit[:12]}/{summary['backbone']}/{summary['dim']}/{summary['index']}"
    return log_run(cfg.tracking, name, params, experiment_metrics(summary), tags,
                   [params_file, *tables, *figures(reports)])
