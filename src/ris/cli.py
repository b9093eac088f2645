"""The `ris` command: `ris search` (find similar images), `ris serve` (the HTTP service), `ris stage NAME` (the DVC
stages), `ris run [-m]` (Hydra), `ris compose` (write params.yaml), `ris bench ...` (benchmarks)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ris.stages import STAGES

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ris.config import Config

USAGE = """ris [--debug] <command> [args]

commands:
  search IMAGE_OR_FOLDER ... [-k K] [--dim D] [--index I] [--json]
                                     find the collection images most like each query (ris search --help)
  serve [--host H] [--port P] [--dim D] [--index I]
                                     an HTTP service and web page over the same index (ris serve --help)
  stage NAME [--backbone B] [--dim D] [--index I]
                                     run one DVC stage from params.yaml ({stages})
  run [-m] [OVERRIDES ...]           evaluate a grid in memory with Hydra, one MLflow run per cell and protocol
                                     (-m sweeps, e.g. -m grid.dims=64,128 grid.indexes=annoy,brute)
  compose [OVERRIDES ...]            write params.yaml: conf/ composed with Hydra, as `dvc exp run -S` does
  bench search [--scale caltech|million] [--only GROUP ...]
                                     every index family swept: recall@10 against QPS, build time, memory, the
                                     wrapper against the raw library call -> reports/bench/search/ (JSON, PNG)
  bench extract [--limit N] [--batch-size B] [--workers W] [--devices D]
                                     extraction end to end against the model's fastest forward-only pass and
                                     decoding on one core -> reports/bench/extract/ (JSON, PNG)
  bench backbones [NAME ...]         every configured backbone: feature length, parameters, GFLOPs and
                                     forward-only images/s here -> reports/bench/backbones/ (JSON, Markdown)
  bench serve [--clients N] [--requests R]
                                     POST /search under load on loopback: latency, requests/s, memory
                                     -> reports/bench/serve/ (JSON)

A problem you can fix (a config key or value, a missing input) is one line on stderr and exit status 1 (2 for
`ris search` when nothing could run); --debug (or RIS_DEBUG=1) shows the full traceback instead.
""".format(stages=", ".join(STAGES))
DEBUG_ENV = "RIS_DEBUG"


def compose_config(overrides: Sequence[str], conf_dir: Path | None = None) -> tuple[DictConfig, Config]:
    """Compose ``conf/`` with ``overrides``, resolved and checked; a bad override is one :class:`ConfigError` line.

    Returns:
        The composed tree (as written to params.yaml) and the checked config.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import DictConfig, OmegaConf

    from ris.checks import checked_config
    from ris.config import ConfigError, unknown_key_message
    from ris.finetune.losses import check_loss
    from ris.paths import conf_dir as default_conf_dir

    root = (conf_dir or default_conf_dir()).resolve()
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        try:
            composed = compose(config_name="config", overrides=list(overrides))
        except MissingConfigException as error:  # a config group choice that has no file, e.g. backbone=resnet5
            group = re.search(r"'([^'/]+)/([^']+)'", str(error))
            if group is None:
                raise ConfigError(f"bad override: {str(error).splitlines()[0]}") from error
            name, choice = group.groups()
            choices = sorted(path.stem for path in (root / name).glob("*.yaml"))
            close = difflib.get_close_matches(choice, choices, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"'{name}={choice}': conf/{name} has no {choice}.yaml{hint} "
                              f"(choices: {', '.join(choices)})") from error
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
    cfg = checked_config(composed, check_model=True)  # type: ignore[arg-type]
    check_loss(cfg.finetune.loss.name)
    # dvc.yaml's matrix stages need lists: a single grid value is written as a one-element list.
    composed.grid.backbones, composed.grid.dims, composed.grid.indexes = \
        cfg.grid.backbones, cfg.grid.dims, cfg.grid.indexes
    return composed, cfg


def compose_params(overrides: Sequence[str], out: Path = Path("params.yaml"), conf_dir: Path | None = None) -> Path:
    """Compose ``conf/`` with ``overrides`` and write it, checked, to ``out`` (the file `dvc repro` reads)."""
    from omegaconf import OmegaConf

    from ris.paths import write_text_atomic

    composed, _ = compose_config(overrides, conf_dir)  # a bad composition is rejected before it is written
    write_text_atomic(out, OmegaConf.to_yaml(composed))
    return out


def check_run_overrides(args: Sequence[str]) -> None:
    """Compose every job a `ris run [-m]` command line would run, so a bad override is one line before Hydra starts.

    Hydra's own flags and ``hydra.*`` settings are left to Hydra; each value of a sweep is checked once (with the
    first value of the other sweeps); ``glob()`` sweeps are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from ris.config import ConfigError

    lines = [arg for arg in args if "=" in arg and not arg.startswith(("-", "hydra.", "hydra/", "+hydra"))]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as error:
        raise ConfigError(f"bad override: {str(error).splitlines()[0]}") from error
    options: list[list[str]] = []
    for override in parsed:
        sweep = override.is_sweep_override() and override.value_type.name != "GLOB_CHOICE_SWEEP"
        key = override.get_key_element()
        options.append([f"{key}={value}" for value in override.sweep_string_iterator()] if sweep
                       else [] if override.is_sweep_override() else [override.input_line])
    chosen = [values for values in options if values]
    first = [values[0] for values in chosen]
    compose_config(first)
    for position, values in enumerate(chosen):
        for value in values[1:]:
            compose_config([*first[:position], value, *first[position + 1:]])


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
    elif command == "serve":
        from ris.serve.command import main as serve_main

        sys.exit(serve_main(rest))
    elif command == "bench":
        if rest[:1] == ["search"]:
            from ris.bench.command import main as bench_main

            sys.exit(bench_main(rest[1:]))
        if rest[:1] == ["extract"]:
            from ris.bench.extract import main as bench_extract_main

            sys.exit(bench_extract_main(rest[1:]))
        if rest[:1] == ["backbones"]:
            from ris.bench.backbones import main as bench_backbones_main

            sys.exit(bench_backbones_main(rest[1:]))
        if rest[:1] == ["serve"]:
            from ris.bench.serve import main as bench_serve_main

            sys.exit(bench_serve_main(rest[1:]))
        sys.exit("ris bench: name a benchmark: search, extract, backbones or serve (--help for its options)")
    elif command == "stage":
        if rest[:1] in (["-h"], ["--help"]):
            print("ris stage NAME [--params params.yaml] [--backbone B] [--dim D] [--index I] [--training T]\n"
                  f"stages: {', '.join(STAGES)}")
            return
        if not rest or rest[0] not in STAGES:
            sys.exit(f"ris stage: name one of {', '.join(STAGES)}")
        importlib.import_module(f"ris.stages.{rest[0]}").main(rest[1:])
    elif command == "run":
        from ris.run import hydra_main

        check_run_overrides(rest)
        hydra_main(rest)
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
