"""Configuration checks that need the pipeline's registries (index families, rerankers, protocols, timm's models).

The schema (:mod:`ris.config`) imports none of them; this module sits above both, and every entry point loads its
configuration through :func:`checked_config`, or checks a schema-loaded one with :func:`check_registries`.
Stages before `reduce` (download, split, extract) need no registry and import none, so a change to an index
family's code does not make DVC re-extract features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ris.config import Config, ConfigError, load_config, read_config_file
from ris.embed.models import check_backbone_name
from ris.evaluate.declarations import protocol_metrics
from ris.evaluate.protocols import PROTOCOLS
from ris.index.registry import INDEX_FAMILIES, UnknownSettingError
from ris.rerank import RERANKERS, InvalidSettingError, build_reranker


def checked_config(raw: dict[str, Any] | DictConfig, *, check_model: bool = False) -> Config:
    """:func:`ris.config.load_config`, then the checks that need registries.

    Args:
        raw: the composed configuration.
        check_model: also check that every backbone of ``grid.backbones`` is a timm model (imports timm, a few
            seconds), as the entry points that start work do.

    Raises:
        ConfigError: naming the offending key (and the allowed values where there is a fixed set).
    """
    cfg = load_config(raw)
    check_registries(cfg)
    if check_model:
        for name in dict.fromkeys([cfg.backbone.name, *cfg.grid.backbones]):
            check_backbone_name(name)
    return cfg


def check_registries(cfg: Config) -> Config:
    """Check the index families, the re-ranking methods, their settings and the protocols ``cfg`` names.

    Raises:
        ConfigError: naming the offending key and the allowed values.
    """
    for name, index in cfg.indexes.items():
        key = f"indexes.{name}"
        if index.family not in INDEX_FAMILIES:
            raise ConfigError(f"config key '{key}.family' is {index.family!r}; "
                              f"allowed values: {', '.join(INDEX_FAMILIES)}")
        try:
            INDEX_FAMILIES[index.family].check_params(index.params)
        except UnknownSettingError as error:
            raise ConfigError(f"config key '{key}.params.{error.setting}' is not a setting of '{index.family}'; "
                              f"allowed: {', '.join(error.allowed) or 'none'}") from error
    for name, reranker in cfg.rerankers.items():
        key = f"rerankers.{name}"
        if reranker.method not in RERANKERS:
            raise ConfigError(f"config key '{key}.method' is {reranker.method!r}; "
                              f"allowed values: {', '.join(RERANKERS)}")
        try:
            build_reranker(reranker.method, reranker.params)
        except UnknownSettingError as error:
            raise ConfigError(f"config key '{key}.params.{error.setting}' is not a setting of '{reranker.method}'; "
                              f"allowed: {', '.join(error.allowed) or 'none'}") from error
        except InvalidSettingError as error:
            raise ConfigError(f"config key '{key}.params.{error.setting}' {error.reason}") from error
    ratios = [spec.key for spec in protocol_metrics(cfg.eval) if spec.unit == "ratio"]
    if cfg.reduce.sweep.choose_metric not in ratios:
        raise ConfigError(f"config key 'reduce.sweep.choose_metric' is {cfg.reduce.sweep.choose_metric!r}; "
                          f"allowed values: {', '.join(ratios)}")
    for position, protocol in enumerate(cfg.eval.protocols):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"config key 'eval.protocols[{position}]' is {protocol!r}; "
                              f"allowed values: {', '.join(PROTOCOLS)}")
    if cfg.reduce.sweep.choose_protocol not in cfg.eval.protocols:
        raise ConfigError(f"config key 'reduce.sweep.choose_protocol' is {cfg.reduce.sweep.choose_protocol!r}; "
                          f"allowed values (eval.protocols): {', '.join(cfg.eval.protocols)}")
    return cfg


def read_params(path: str | Path = "params.yaml") -> Config:
    """Load and fully check the committed, composed ``params.yaml`` (what `dvc repro` runs from)."""
    return check_registries(read_config_file(path))
