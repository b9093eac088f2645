"""DVC stage `index`: build one grid cell's index over the reduced features and save it."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from ris.config import Config
from ris.experiment import Variant, build_index, folder_bytes, grid_variant
from ris.paths import PipelinePaths, atomic_folder
from ris.stages._common import load_stage_config, parse_stage_args
from ris.stages.reduce import REDUCED_FILE

BUILD_FILE = "build.json"


def run(cfg: Config, variant: Variant) -> dict:
    """Build, time and save the index; its build time and size go to ``build.json`` beside it."""
    paths = PipelinePaths(cfg)
    vectors = np.load(paths.reduced_dir(variant.dim) / REDUCED_FILE)
    index, seconds = build_index(vectors, variant.index)
    with atomic_folder(paths.index_dir(variant.dim, variant.index.name)) as folder:
        index.save(folder)
        build = {"build_seconds": seconds, "items": len(index), "dim": int(vectors.shape[1]),
                 "index_bytes": folder_bytes(folder)}
        (folder / BUILD_FILE).write_text(json.dumps(build, indent=2))
    return build


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("index", argv, cell=True)
    cfg = load_stage_config(args)
    run(cfg, grid_variant(cfg, args.dim, args.index))


if __name__ == "__main__":
    main()
