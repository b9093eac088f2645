"""Typed schema of the composed configuration, shared by `dvc repro` (params.yaml) and `ris run` (Hydra).

Both entry points go through :func:`load_config`, so an unknown key or a bad value is rejected before any work
starts, with a message that names the key and the allowed values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ris.errors import UserFacingError

FULL_DIM = "full"
"""Value of ``reduce.dim`` that keeps the backbone's full embedding."""


class ConfigError(UserFacingError, ValueError):
    """A configuration key holds a value the pipeline cannot use."""


@dataclass
class DataConfig:
    """Where the image collection comes from and where it is laid out."""

    name: str = "caltech101"
    url: str = ""
    # Known archive file names and their md5: every archive with one of these names is verified.
    checksums: dict[str, str] = field(default_factory=dict)
    archive: str | None = None  # a local copy of the archive (or env RIS_DATA_ARCHIVE)
    source_dir: str | None = None  # an already extracted image folder (or env RIS_DATA_DIR)
    image_root: str = ""  # folder inside the archive whose sub-folders are the classes
    root: str = "data"  # where the prepared collection lives
    download_dir: str = "data/downloads"  # cache of downloaded archives (not a pipeline output)
    exclude_classes: list[str] = field(default_factory=list)  # folders that are not part of the collection
    timeout_s: float = 30.0
    retries: int = 3


@dataclass
class BackboneConfig:
    """A timm model used as a frozen feature extractor."""

    name: str = "mobilenetv2_100"
    pretrained: bool = True
    weights_file: str | None = None  # a local weights file (safetensors, .pth or .bin)
    weights_dir: str | None = None  # a folder of weights files named after the model (or env RIS_WEIGHTS_DIR)
    normalize: bool = True  # L2-normalise every embedding
    batch_size: int = 32
    num_workers: int = 2
    precision: str = "32-true"
    accelerator: str = "auto"


@dataclass
class ReduceConfig:
    """Dimensionality reduction applied to the embeddings before indexing."""

    method: str = "pca"
    dim: Any = 100  # an int, or "full" to keep every dimension
    whiten: bool = False


@dataclass
class IndexConfig:
    """A nearest-neighbour algorithm and its settings."""

    name: str = "brute"
    metric: str = "euclidean"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LatencyConfig:
    """How single-query latency is measured (at ``eval.recall_k`` neighbours, the search recall is reported for)."""

    queries: int = 1000
    warmup: int = 50
    threads: int = 1
    seed: int = 0


@dataclass
class EvalConfig:
    """Retrieval evaluation protocol."""

    protocol: str = "book"
    k: int = 4  # precision@k of the book protocol
    recall_k: int = 10  # recall@k of an approximate index against exact search
    latency: LatencyConfig = field(default_factory=LatencyConfig)


@dataclass
class GridConfig:
    """The cells `dvc repro` evaluates: every dimension with every index."""

    dims: list[Any] = field(default_factory=lambda: [FULL_DIM, 100])
    indexes: list[str] = field(default_factory=lambda: ["brute", "annoy"])


@dataclass
class TrackingConfig:
    """MLflow settings (MLFLOW_TRACKING_URI, when set, wins over ``uri``)."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "ris"
    enabled: bool = True


@dataclass
class PathsConfig:
    """Deterministic output locations (never Hydra's timestamped run folders)."""

    artifacts: str = "artifacts"
    reports: str = "reports"


@dataclass
class Config:
    """The whole composed configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    indexes: dict[str, IndexConfig] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


METRICS = ("euclidean", "angular")
REDUCE_METHODS = ("pca", "none")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def load_config(raw: dict[str, Any] | DictConfig, *, check_model: bool = False) -> Config:
    """Merge ``raw`` into the typed schema and check every value.

    Args:
        raw: the composed configuration.
        check_model: also check that ``backbone.name`` is a timm model (imports timm, a few seconds), as the
            entry points that start work do.

    Raises:
        ConfigError: naming the offending key (and the allowed values where there is a fixed set).
    """
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {error.msg if hasattr(error, 'msg') else error}") from error
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    if check_model:
        check_backbone_name(cfg.backbone.name)
    return cfg


def check_backbone_name(name: str) -> None:
    """Reject a model name timm does not know (``arch`` or ``arch.tag``)."""
    import timm  # imported here: slow, and only the entry points that start work need it

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise ConfigError(f"config key 'backbone.name' is {name!r}, which is not a timm model"
                          + (f"; similar: {', '.join(close)}" if close else ""))


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {', '.join(allowed)}")


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"config key '{key}' is {value!r}; it must be a positive integer")


def parse_dim(text: str) -> int | None:
    """A dimension given on a command line (``"full"`` or an integer), checked."""
    return check_dim("--dim", text if text == FULL_DIM else int(text) if text.isdigit() else text)


def _at_least_zero(key: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"config key '{key}' is {value!r}; it must be 0 or more")


def check_dim(key: str, dim: Any) -> int | None:
    """Return the target dimension (None for full), or raise naming ``key``."""
    if dim == FULL_DIM or dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"config key '{key}' is {dim!r}; allowed values: a positive integer or '{FULL_DIM}'")
    return dim


def _check_index(key: str, index: IndexConfig) -> None:
    from ris.index import INDEX_CLASSES  # local imports: those packages import this module

    _choice(f"{key}.name", index.name, tuple(INDEX_CLASSES))
    _choice(f"{key}.metric", index.metric, METRICS)
    INDEX_CLASSES[index.name].check_params(index.params, key=f"{key}.params")


def validate(cfg: Config) -> None:
    """Check values that the schema's types cannot express."""
    _choice("reduce.method", cfg.reduce.method, REDUCE_METHODS)
    check_dim("reduce.dim", cfg.reduce.dim)
    _check_index("index", cfg.index)
    for name, index in cfg.indexes.items():
        _check_index(f"indexes.{name}", index)
        if index.name != name:
            raise ConfigError(f"config key 'indexes.{name}.name' is {index.name!r}; it must be {name!r}")
    for position, dim in enumerate(cfg.grid.dims):
        check_dim(f"grid.dims[{position}]", dim)
    for position, name in enumerate(cfg.grid.indexes):
        _choice(f"grid.indexes[{position}]", name, tuple(cfg.indexes))
    from ris.evaluate import PROTOCOLS

    _choice("eval.protocol", cfg.eval.protocol, tuple(PROTOCOLS))
    _positive("eval.k", cfg.eval.k)
    _positive("eval.recall_k", cfg.eval.recall_k)
    _positive("eval.latency.queries", cfg.eval.latency.queries)
    _positive("eval.latency.threads", cfg.eval.latency.threads)
    _at_least_zero("eval.latency.warmup", cfg.eval.latency.warmup)
    _positive("backbone.batch_size", cfg.backbone.batch_size)
    _at_least_zero("backbone.num_workers", cfg.backbone.num_workers)
    _choice("backbone.precision", cfg.backbone.precision, PRECISIONS)
    _choice("backbone.accelerator", cfg.backbone.accelerator, ACCELERATORS)
    if not (cfg.data.url or cfg.data.archive or cfg.data.source_dir or _env_source()):
        raise ConfigError("config keys 'data.url', 'data.archive' and 'data.source_dir' are all empty; set one")


def _env_source() -> str | None:
    return os.environ.get("RIS_DATA_ARCHIVE") or os.environ.get("RIS_DATA_DIR")


def read_params(path: str | Path = "params.yaml", *, check_model: bool = False) -> Config:
    """Load and validate the committed, composed ``params.yaml`` (what `dvc repro` runs from)."""
    return load_config(OmegaConf.load(path), check_model=check_model)
