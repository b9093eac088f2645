"""DVC stage `evaluate`: measure one grid cell under every protocol and track it in MLflow."""

from __future__ import annotations

from collections.abc import Sequence

from ris.cell import Cell, evaluate_cell, grid_cell, track_cell
from ris.checks import check_registries
from ris.config import Config, dim_label
from ris.data.split import read_splits
from ris.embed.store import load_features
from ris.index.store import IndexStore
from ris.paths import PipelinePaths, write_json_atomic
from ris.reduce import ReducedStore
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main, timed


def run(cfg: Config, cell: Cell) -> dict:
    """Evaluate the saved index of ``cell``; write its metrics JSON and log one MLflow run per protocol.

    Every store is checked against the features it must come from before anything is measured or logged.
    """
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    expected = {"features_key": features.key, "dim": dim_label(cell.dim)}
    reduced = ReducedStore.load(paths.reduced_dir(cell.dim), expect=expected)
    index = IndexStore.load(paths.index_dir(cell.dim, cell.index_name), expect={**expected, "index": cell.index_name})
    splits = read_splits(paths.split_table, features.rows)
    with timed(f"evaluate {cell.name}"):
        result = evaluate_cell(cell, reduced, index, features.labels, splits, cfg)
    report = result.report()
    metrics_file = paths.metrics_file(cell.dim, cell.index_name)
    write_json_atomic(metrics_file, report)
    track_cell(cfg, result, source="dvc", features_key=features.key, artifacts=[metrics_file])
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("evaluate", argv, backbone=True, dim=True, index=True)

    def body() -> Done:
        cfg = check_registries(load_stage_config(args))
        cell = grid_cell(cfg, args.dim, args.index)
        report, paths = run(cfg, cell), PipelinePaths(cfg)
        headline = ", ".join(f"{protocol} MAP@R {metrics['map_at_r']:.4f}"
                             for protocol, metrics in report["protocols"].items() if "map_at_r" in metrics)
        return Done([paths.features_dir, paths.reduced_dir(cell.dim), paths.index_dir(cell.dim, cell.index_name)],
                    [paths.metrics_file(cell.dim, cell.index_name)], headline)

    stage_main("evaluate", body)


if __name__ == "__main__":
    main()
