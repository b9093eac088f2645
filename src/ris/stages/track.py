"""DVC stage `track`: one MLflow run for the whole pipeline state (:mod:`ris.experiments`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ris.experiments import log_experiment
from ris.paths import PipelinePaths
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main
from ris.tracking.mlflow_log import local_store


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("track", argv)

    def body() -> Done:
        cfg = load_stage_config(args)
        reports = PipelinePaths(cfg).reports_dir
        run_id = log_experiment(cfg, Path(args.params), reports)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
        store = local_store(uri)
        return Done([Path(args.params), reports], [store] if store is not None else [],
                    f"MLflow run {run_id} at {uri}" if run_id else "tracking is disabled")

    stage_main("track", body)


if __name__ == "__main__":
    main()
