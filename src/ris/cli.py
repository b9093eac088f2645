"""The `ris` command: `ris search` (find similar images), `ris stage NAME` (the DVC stages), `ris run [-m]`
(Hydra), `ris compose` (write params.yaml)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ris.stages import STAGES

USAGE = """ris <command> [args]

commands:
  search IMAGE_OR_FOLDER ... [-k K] [--dim D] [--index I] [--json]
                                     find the collection images most like each query (ris search --help)
  stage NAME [--dim D] [--index I]   run one DVC stage from params.yaml ({stages})
  run [-m] [OVERRIDES ...]           evaluate a grid in memory with Hydra, one MLflow run per cell and protocol
                                     (-m sweeps, e.g. -m grid.dims=64,128 grid.indexes=annoy,brute)
  compose [OVERRIDES ...]            write params.yaml: conf/ composed with Hydra, as `dvc exp run -S` does
""".format(stages=", ".join(STAGES))


def compose_params(overrides: Sequence[str], out: Path = Path("params.yaml"), conf_dir: Path | None = None) -> Path:
    """Compose ``conf/`` with ``overrides`` and write it, checked, to ``out`` (the file `dvc repro` reads)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ris.checks import checked_config
    from ris.paths import CONF_DIR, write_text_atomic

    with initialize_config_dir(config_dir=str((conf_dir or CONF_DIR).resolve()), version_base="1.3"):
        composed = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(composed)
    cfg = checked_config(composed, check_model=True)  # reject a bad composition before writing it
    # dvc.yaml's matrix stages need lists: a single grid value is written as a one-element list.
    composed.grid.dims, composed.grid.indexes = cfg.grid.dims, cfg.grid.indexes
    write_text_atomic(out, OmegaConf.to_yaml(composed))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "search":
        from ris.search.command import main as search_main

        sys.exit(search_main(rest))
    elif command == "stage":
        if not rest or rest[0] not in STAGES:
            sys.exit(f"ris stage: name one of {', '.join(STAGES)}")
        importlib.import_module(f"ris.stages.{rest[0]}").main(rest[1:])
    elif command == "run":
        from ris.run import hydra_main

        sys.argv = ["ris run", *rest]  # Hydra reads its overrides from sys.argv
        hydra_main()
    elif command == "compose":
        parser = argparse.ArgumentParser(prog="ris compose")
        parser.add_argument("--out", type=Path, default=Path("params.yaml"))
        parser.add_argument("overrides", nargs="*")
        parsed = parser.parse_args(rest)
        print(f"wrote {compose_params(parsed.overrides, parsed.out)}")
    else:
        sys.exit(f"ris: unknown command '{command}'\n\n{USAGE}")


if __name__ == "__main__":
    main()
