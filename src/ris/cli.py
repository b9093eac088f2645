"""The `ris` command: `ris search` (find similar images), `ris stage NAME` (the DVC stages), `ris run [-m]`
(Hydra), `ris compose` (write params.yaml)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ris.stages import STAGES

USAGE = """ris [--debug] <command> [args]

commands:
  search IMAGE_OR_FOLDER ... [-k K] [--dim D] [--index I] [--json]
                                     find the collection images most like each query (ris search --help)
  stage NAME [--dim D] [--index I]   run one DVC stage from params.yaml ({stages})
  run [-m] [OVERRIDES ...]           evaluate a grid in memory with Hydra, one MLflow run per cell and protocol
                                     (-m sweeps, e.g. -m grid.dims=64,128 grid.indexes=annoy,brute)
  compose [OVERRIDES ...]            write params.yaml: conf/ composed with Hydra, as `dvc exp run -S` does

A problem you can fix (a config key or value, a missing input) is one line on stderr and exit status 1 (2 for
`ris search` when nothing could run); --debug (or RIS_DEBUG=1) shows the full traceback instead.
""".format(stages=", ".join(STAGES))
DEBUG_ENV = "RIS_DEBUG"


def compose_params(overrides: Sequence[str], out: Path = Path("params.yaml"), conf_dir: Path | None = None) -> Path:
    """Compose ``conf/`` with ``overrides`` and write it, checked, to ``out`` (the file `dvc repro` reads)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf

    from ris.checks import checked_config
    from ris.config import ConfigError, unknown_key_message
    from ris.paths import CONF_DIR, write_text_atomic

    with initialize_config_dir(config_dir=str((conf_dir or CONF_DIR).resolve()), version_base="1.3"):
        try:
            composed = compose(config_name="config", overrides=list(overrides))
        except HydraException as error:
            missing = re.search(r"Could not override '([^']+)'", str(error))
            if missing is None:
                raise ConfigError(f"bad override: {str(error).splitlines()[0]}") from error
            # Name the keys that do exist where the override pointed, with the close matches.
            key = missing.group(1)
            parent = OmegaConf.select(compose(config_name="config"), key.rpartition(".")[0] or ".")
            known = [str(name) for name in parent] if isinstance(parent, DictConfig) else []
            raise ConfigError(unknown_key_message(key, known)) from error
    OmegaConf.resolve(composed)
    cfg = checked_config(composed, check_model=True)  # reject a bad composition before writing it
    # dvc.yaml's matrix stages need lists: a single grid value is written as a one-element list.
    composed.grid.dims, composed.grid.indexes = cfg.grid.dims, cfg.grid.indexes
    write_text_atomic(out, OmegaConf.to_yaml(composed))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[:1]:
        args = args[1:]
        os.environ[DEBUG_ENV] = "1"  # read by the stages and `ris run` too
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    from ris.errors import UserFacingError

    try:
        run_command(args[0], args[1:])
    except UserFacingError as error:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        sys.exit(f"ris {args[0]}: {error}")


def run_command(command: str, rest: list[str]) -> None:
    """Dispatch one `ris` command."""
    if command == "search":
        from ris.search.command import main as search_main

        sys.exit(search_main(rest))
    elif command == "stage":
        if rest[:1] in (["-h"], ["--help"]):
            print(f"ris stage NAME [--params params.yaml] [--dim D] [--index I]\nstages: {', '.join(STAGES)}")
            return
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
