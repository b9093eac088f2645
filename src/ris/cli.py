"""The `ris` command: `ris stage NAME` (DVC entry points), `ris run [-m] OVERRIDES` (Hydra), `ris compose`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ris.stages import STAGES

USAGE = """ris <command> [args]

commands:
  stage NAME [--dim D] [--index I]   run one DVC stage from params.yaml ({stages})
  run [-m] [OVERRIDES ...]           evaluate one variant with Hydra
                                     (-m sweeps, e.g. -m reduce.dim=64,128 index=annoy,brute)
  compose [OVERRIDES ...]            write params.yaml: conf/ composed with Hydra, as `dvc exp run -S` does
""".format(stages=", ".join(STAGES))


def compose_params(overrides: Sequence[str], out: Path = Path("params.yaml"), conf_dir: Path | None = None) -> Path:
    """Compose ``conf/`` with ``overrides`` and write it, validated, to ``out`` (the file `dvc repro` reads)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ris.config import load_config
    from ris.paths import CONF_DIR, write_text_atomic

    with initialize_config_dir(config_dir=str((conf_dir or CONF_DIR).resolve()), version_base="1.3"):
        composed = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(composed)
    load_config(composed, check_model=True)  # reject a bad composition before writing it
    write_text_atomic(out, OmegaConf.to_yaml(composed))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "stage":
        if not rest or rest[0] not in STAGES:
            sys.exit(f"ris stage: name one of {', '.join(STAGES)}")
        from ris.errors import UserFacingError

        try:
            importlib.import_module(f"ris.stages.{rest[0]}").main(rest[1:])
        except UserFacingError as error:
            # Problems the user fixes in config or environment: the message, not a traceback.
            sys.exit(f"ris stage {rest[0]}: {error}")
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
