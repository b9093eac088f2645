"""DVC stage `reduce`: fit the reduction to one grid dimension; save it with the reduced vectors."""

from __future__ import annotations

from collections.abc import Sequence

from ris.config import AUTO_DIM, Config, Dim, dim_label, parse_dim
from ris.data.split import read_splits
from ris.embed.store import load_features
from ris.paths import PipelinePaths, atomic_folder
from ris.reduce import ReducedStore
from ris.reduce.choice import read_chosen_dim
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main, timed


def run(cfg: Config, dim: Dim) -> dict:
    """Fit the reducer on the collection's train and val embeddings; save it and the reduced matrix as one store.

    ``auto`` is the dimension the pca_sweep stage chose for these features.
    """
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    splits = read_splits(paths.split_table, features.rows)
    target = read_chosen_dim(paths.pca_choice, features.key) if dim == AUTO_DIM else dim
    assert not isinstance(target, str)
    with timed(f"reduce to {dim_label(dim)} ({dim_label(target)})"):
        reduced = ReducedStore.fit(features, target, cfg.reduce, splits, label=dim_label(dim))
    with atomic_folder(paths.reduced_dir(dim)) as folder:
        reduced.save(folder)
    return {"dim": reduced.reducer.output_dim, "explained_variance": reduced.reducer.explained_variance}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("reduce", argv, backbone=True, dim=True)
    def body() -> Done:
        cfg, dim = load_stage_config(args), parse_dim(args.dim)
        report, paths = run(cfg, dim), PipelinePaths(cfg)
        variance = report["explained_variance"]
        kept = f", {variance:.1%} of the variance kept" if variance is not None else ""
        return Done([paths.features_dir, paths.split_table], [paths.reduced_dir(dim)],
                    f"{report['dim']} dimensions{kept}")

    stage_main("reduce", body)


if __name__ == "__main__":
    main()
