"""DVC stage `pca_sweep`: accuracy and exact-search latency at every dimension; the dimension the rule chooses."""

from __future__ import annotations

from collections.abc import Sequence

from ris.checks import check_registries
from ris.config import Config
from ris.data.split import read_splits
from ris.embed.store import load_features
from ris.paths import PipelinePaths, atomic_folder, write_json_atomic, write_text_atomic
from ris.pca_sweep import plot_sweep, sweep_pca
from ris.stages._common import Done, load_stage_config, log, parse_stage_args, stage_main, timed
from ris.tracking.mlflow_log import git_commit, log_run


def run(cfg: Config) -> dict:
    """Write ``sweep.csv``, ``choice.json`` and the two plots into ``reports/pca/``; log one MLflow run."""
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    splits = read_splits(paths.split_table, features.rows)
    with timed("PCA sweep"):
        result = sweep_pca(features, splits, cfg)
    write_text_atomic(paths.pca_sweep_table, result.table.to_csv(index=False, float_format="%.6g"))
    choice = {"backbone": cfg.backbone.name, "features_key": features.key, **result.choice}
    write_json_atomic(paths.pca_choice, choice)
    with atomic_folder(paths.pca_plots) as folder:
        plots = plot_sweep(result.table, cfg, folder)
    log.info("PCA sweep: %s -> %s (%s %.4f; best %s at %s)", choice["rule"], choice["dim"], choice["metric"],
             choice["value"], choice["best_value"], choice["best_dim"])
    chosen = choice["dim"]
    log_run(cfg.tracking, f"{cfg.backbone.name}/pca_sweep", {"reduce.sweep": choice["rule"],
                                                             "features.key": features.key},
            {"chosen_dim": features.embeddings.shape[1] if chosen == "full" else chosen,
             f"chosen_{choice['metric']}": choice["value"], f"best_{choice['metric']}": choice["best_value"]},
            {"backbone": cfg.backbone.name, "stage": "pca_sweep", "git_commit": git_commit(), "source": "dvc"},
            [paths.pca_sweep_table, paths.pca_choice, *[paths.pca_plots / plot.name for plot in plots]])
    return choice


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("pca_sweep", argv, backbone=True)
    def body() -> Done:
        cfg = check_registries(load_stage_config(args))
        choice, paths = run(cfg), PipelinePaths(cfg)
        return Done([paths.features_dir, paths.split_table], [paths.pca_dir],
                    f"chose {choice['dim']} ({choice['metric']} {choice['value']:.4f})")

    stage_main("pca_sweep", body)


if __name__ == "__main__":
    main()
