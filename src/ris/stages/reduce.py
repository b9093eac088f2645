"""DVC stage `reduce`: fit PCA to one grid dimension and write the reduced features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ris.config import Config, ConfigError, parse_dim
from ris.embed.store import load_features
from ris.paths import PipelinePaths, atomic_folder
from ris.reduce import fit_reducer
from ris.stages._common import load_stage_config, parse_stage_args, timed

REDUCED_FILE = "features.npy"


def run(cfg: Config, dim: int | None) -> dict:
    """Fit the reducer on the collection's embeddings; save it and the reduced matrix together."""
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    with timed(f"reduce to {dim or 'full'}"):
        try:
            reducer = fit_reducer(features.embeddings, dim, method=cfg.reduce.method, whiten=cfg.reduce.whiten)
        except ValueError as error:
            raise ConfigError(f"config key 'grid.dims' holds {dim}: {error}") from error
        reduced = reducer.transform(features.embeddings)
    with atomic_folder(paths.reduced_dir(dim)) as folder:
        reducer.save(folder)
        np.save(folder / REDUCED_FILE, reduced)
    return {"dim": reducer.output_dim, "explained_variance": reducer.explained_variance}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("reduce", argv, dim_only=True)
    run(load_stage_config(args), parse_dim(args.dim))


if __name__ == "__main__":
    main()
