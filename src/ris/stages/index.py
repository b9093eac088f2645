"""DVC stage `index`: build one grid cell's index over the reduced vectors and save it."""

from __future__ import annotations

from collections.abc import Sequence

from ris.checks import check_registries
from ris.config import Config, ConfigError, parse_dim
from ris.index.store import IndexStore
from ris.paths import PipelinePaths, atomic_folder
from ris.reduce import ReducedStore
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main, timed


def run(cfg: Config, dim: int | None, index_name: str) -> dict:
    """Build, time and save the index ``indexes.<index_name>`` over the reduced vectors of ``dim``; its description
    records build time, size and provenance."""
    if index_name not in cfg.indexes:
        raise ConfigError(f"--index {index_name!r} is not a key of 'indexes'; known: {', '.join(cfg.indexes)}")
    paths = PipelinePaths(cfg)
    reduced = ReducedStore.load(paths.reduced_dir(dim))
    with timed(f"index {index_name} over {reduced.vectors.shape}"):
        index = IndexStore.build(reduced.vectors, cfg.indexes[index_name], {**reduced.built_from, "index": index_name})
    with atomic_folder(paths.index_dir(dim, index_name)) as folder:
        index.save(folder)
    return {"build_seconds": index.build_seconds, "items": len(index.index), "index_bytes": index.index_bytes}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_stage_args("index", argv, backbone=True, dim=True, index=True)
    def body() -> Done:
        cfg, dim = check_registries(load_stage_config(args)), parse_dim(args.dim)
        report, paths = run(cfg, dim, args.index), PipelinePaths(cfg)
        return Done([paths.reduced_dir(dim)], [paths.index_dir(dim, args.index)],
                    f"{report['items']:,} items built in {report['build_seconds']:.2f} s")

    stage_main("index", body)


if __name__ == "__main__":
    main()
