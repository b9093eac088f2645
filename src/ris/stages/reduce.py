"""DVC stage `reduce`: fit PCA to one grid dimension and write the reduced features."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ris.config import Config, check_dim
from ris.embed.store import load_features
from ris.paths import PipelinePaths
from ris.reduce import fit_reducer
from ris.stages._common import load_stage_config, parse_stage_args, timed

REDUCED_FILE = "features.npy"


def run(cfg: Config, dim: int | None) -> dict:
    """Fit the reducer on the collection's embeddings; save it and the reduced matrix."""
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    with timed(f"reduce to {dim or 'full'}"):
        reducer = fit_reducer(features.embeddings, dim, method=cfg.reduce.method, whiten=cfg.reduce.whiten,
                              seed=cfg.reduce.seed)
        reduced = reducer.transform(features.embeddings)
    folder = paths.reduced_dir(dim)
    reducer.save(folder)
    partial = folder / f".{REDUCED_FILE}.partial.npy"
    np.save(partial, reduced)
    os.replace(partial, folder / REDUCED_FILE)
    return {"dim": reducer.output_dim, "explained_variance": reducer.explained_variance}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("reduce", argv, dim_only=True)
    cfg = load_stage_config(args)
    run(cfg, check_dim("--dim", args.dim if args.dim == "full" else int(args.dim)))


if __name__ == "__main__":
    main()
