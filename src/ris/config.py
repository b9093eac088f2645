"""Typed schema of the composed configuration, shared by `dvc repro` (params.yaml) and `ris run` (Hydra).

This module checks what the schema alone can express (types, ranges, fixed sets of values) and imports none of the
pipeline's registries; :mod:`ris.checks` adds what needs them (index families, protocols, timm models). Every entry
point goes through :func:`ris.checks.checked_config`, so an unknown key or a bad value is rejected before any work
starts, with a message that names the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ris.errors import UserFacingError

FULL_DIM = "full"
"""The dimension that keeps the backbone's full embedding."""
AUTO_DIM = "auto"
"""The dimension the ``pca_sweep`` stage chooses by ``reduce.sweep``'s rule (read from its ``choice.json``)."""
Dim = int | str | None
"""A dimension of the grid: a number, None for ``full``, or :data:`AUTO_DIM`."""
NO_RERANK = "none"
"""How results tables and MLflow tags name a cell's rows without re-ranking."""


class ConfigError(UserFacingError, ValueError):
    """A configuration key holds a value the pipeline cannot use."""


@dataclass
class SplitConfig:
    """The held-out split by image: per class, these shares of its images go to train / val / test (seeded)."""

    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    seed: int = 0


@dataclass
class DataConfig:
    """Where the image collection comes from and where it is laid out."""

    name: str = "caltech101"
    url: str = ""
    # Known archive file names and their md5: every archive with one of these names is verified.
    checksums: dict[str, str] = field(default_factory=dict)
    archive: str | None = None  # a local copy of the archive (or env RIS_DATA_ARCHIVE)
    source_dir: str | None = None  # an already extracted image folder (or env RIS_DATA_DIR)
    # Catalogue that folder where it is instead of copying it into ``root`` (saves the copy's time and disk).
    in_place: bool = False
    # Images added while serving (`POST /images`), one sub-folder per class: catalogued with the collection. It must
    # exist (DVC hashes it as the download stage's input); git keeps its README.
    additions: str = "data/additions"
    image_root: str = ""  # folder inside the archive whose sub-folders are the classes
    root: str = "data"  # where the prepared collection lives
    download_dir: str = "data/downloads"  # cache of downloaded archives (not a pipeline output)
    exclude_classes: list[str] = field(default_factory=list)  # folders that are not part of the collection
    timeout_s: float = 30.0
    retries: int = 3
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class BackboneConfig:
    """A timm model used as a frozen feature extractor."""

    name: str = "mobilenetv2_100"
    pretrained: bool = True
    weights_file: str | None = None  # a local weights file (safetensors, .pth or .bin)
    weights_dir: str | None = None  # a folder of weights files named after the model (or env RIS_WEIGHTS_DIR)
    normalize: bool = True  # L2-normalise every embedding
    batch_size: int = 16
    num_workers: int = 1
    precision: str = "32-true"
    accelerator: str = "auto"
    # Where the backbone's last blocks begin (a module name, in forward order): what `finetune.depth=blocks` trains.
    tail_from: str | None = None
    pool: str | None = None  # global pooling: null keeps the model's own (average for timm CNNs); avg, max or gem
    gem_p: float = 3.0  # GeM's exponent (1 is average pooling, large values approach max pooling)
    channels_last: bool = True  # run convolutions in NHWC: the same embeddings, faster on CPU and on tensor cores
    # torch.compile the model (Inductor, frozen weights) when embedding at least compile_min_images images: the same
    # embeddings to float rounding, faster once the compile (seconds to a minute) is repaid. Eager if it fails.
    compile: bool = True
    compile_min_images: int = 4000
    # Processes embedding side by side, one shard each: an integer, or auto (every GPU; on a CPU one single-threaded
    # process per core, which beat one process using every core on 2 cores by 1.13x forward-only and 1.36x end to
    # end: ris bench extract).
    devices: Any = "auto"
    strategy: str = "ddp_fork"  # how Lightning starts them when devices > 1: ddp_fork, or ddp_spawn


@dataclass
class PcaSweepConfig:
    """The PCA sweep: exact-search accuracy and latency at every dimension, plain, whitened and renormalised.

    The rule: the smallest dimension whose ``choose_metric`` under ``choose_protocol`` (with the pipeline's own
    ``reduce.whiten`` / ``reduce.renormalize``) is within ``within_points`` percentage points of the best one.
    """

    dims: list[Any] = field(default_factory=lambda: [8, 16, 32, 64, 100, 128, 256, 512, FULL_DIM])
    whiten: list[bool] = field(default_factory=lambda: [False, True])
    renormalize: list[bool] = field(default_factory=lambda: [False, True])
    choose_metric: str = "map_at_r"
    choose_protocol: str = "heldout"
    within_points: float = 0.5


@dataclass
class ReduceConfig:
    """How embeddings are reduced to each of ``grid.dims`` (``full`` keeps them, renormalised if asked)."""

    method: str = "pca"
    whiten: bool = False
    renormalize: bool = False  # L2-normalise again after PCA
    fit_sample: int | None = 100_000  # PCA is fitted on at most this many train+val rows (seeded); null: all
    seed: int = 0  # the fit sample (and the randomized solver, for very wide features)
    sweep: PcaSweepConfig = field(default_factory=PcaSweepConfig)


@dataclass
class OperatingPointConfig:
    """Where an approximate index answers: with ``target_recall`` set, building it also picks the fastest
    query-time setting (``ef``, ``nprobe``, ``search_k``) whose recall@``k`` against exact search reaches the
    target, on ``queries`` seeded rows of the indexed vectors (each leaving itself out). Null: ``params`` as written.
    """

    target_recall: float | None = None
    k: int = 10
    queries: int = 500
    seed: int = 0


@dataclass
class IndexConfig:
    """One entry of the ``indexes`` catalogue: an index family, its settings and its operating point."""

    family: str = "brute"
    metric: str = "euclidean"
    params: dict[str, Any] = field(default_factory=dict)
    operating_point: OperatingPointConfig = field(default_factory=OperatingPointConfig)


@dataclass
class RerankerConfig:
    """One entry of the ``rerankers`` catalogue: a re-ranking method and its settings."""

    method: str = "aqe"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RerankEvalConfig:
    """Which rerankers (keys of ``rerankers``) are evaluated, on the cells of which indexes (keys of ``indexes``)."""

    rerankers: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)


@dataclass
class LatencyConfig:
    """How single-query latency is measured (at ``eval.recall_k`` neighbours, the search recall is reported for)."""

    queries: int = 1000
    warmup: int = 50
    threads: int = 1
    seed: int = 0


@dataclass
class QuerySampleConfig:
    """At most ``size`` queries per protocol, a seeded sample (the gallery stays whole): evaluation time grows with
    queries x gallery, so a collection of millions is evaluated on a sample. Null: every query."""

    size: int | None = None
    seed: int = 0


@dataclass
class EvalConfig:
    """Retrieval evaluation: which protocols, the k of each metric, and which re-ranking is measured where."""

    protocols: list[str] = field(default_factory=lambda: ["book", "heldout"])
    k: int = 4  # mean precision@k (the book's "accuracy" is k=4)
    recall_ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # R@k: a same-class item among the top k
    ann_recall_k: int = 10  # recall@k of an approximate index against exact search; latency is timed at this k
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    rerank: RerankEvalConfig = field(default_factory=RerankEvalConfig)
    query_sample: QuerySampleConfig = field(default_factory=QuerySampleConfig)


@dataclass
class GridConfig:
    """The cells evaluated: for every backbone named here, every dimension with every index of the catalogue.

    ``backbones`` names the primary ``backbone`` and keys of the ``backbones`` catalogue (empty: the primary alone);
    each backbone's features, PCA sweep and cells are cached on their own, so adding one extracts only that one.
    `dvc repro` runs them as matrix stages; a `ris run` job runs its own (usually one-cell) grid in memory.
    A single value is taken as a one-element list, so ``ris run -m grid.dims=64,128`` sweeps one cell per job.
    """

    backbones: Any = field(default_factory=list)
    dims: Any = field(default_factory=lambda: [FULL_DIM, 100])
    indexes: Any = field(default_factory=lambda: ["brute", "annoy"])


@dataclass
class SearchConfig:
    """What `ris search` (and later the service) uses by default: one cell of the grid (built by `dvc repro`), and
    how many results."""

    dim: Any = 100
    index: str = "annoy"
    k: int = 10


@dataclass
class TrackingConfig:
    """MLflow settings (MLFLOW_TRACKING_URI, when set, wins over ``uri``)."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "ris"
    enabled: bool = True


@dataclass
class LossConfig:
    """A training loss of :mod:`ris.finetune.losses`, by name, with its settings."""

    name: str = "proxy_anchor"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    """How the backbone is fine-tuned (the ``finetune`` stage) and where the result is evaluated.

    ``depth``: ``head`` trains a projection on the frozen backbone's embeddings, ``blocks`` also trains the
    backbone's last blocks (from ``backbone.tail_from``), ``full`` trains the whole network. ``inputs``: ``cached``
    trains on what the frozen part computes once (embeddings, or the activations entering the last blocks), which
    is what makes a fine-tune take minutes on a CPU; ``images`` reads images with timm's training augmentation
    (``full`` needs it; a GPU recipe).
    """

    depth: str = "head"
    inputs: str = "cached"
    embedding_dim: int | None = 256  # width of the learned projection; null: the backbone's own width, no projection
    hidden_dim: int | None = None  # a hidden layer in the projection (batch norm + ReLU); null: a linear projection
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-2  # the projection's and the loss's own parameters (class weights, proxies)
    backbone_lr: float = 1e-3  # the backbone's trained blocks
    weight_decay: float = 1e-4
    warmup_epochs: int = 1  # linear warm-up, then cosine decay to zero
    patience: int = 3  # early stopping: epochs without a better val MAP@R
    hflip: bool = True  # flip training inputs left-right (images, or the cached activation maps)
    # The pretrained embedding's share of the fine-tuned model's cosine similarity, w: the model embeds an image as
    # [sqrt(1 - w) x fine-tuned, sqrt(w) x pretrained], so similarity = (1 - w) fine-tuned + w pretrained. The
    # fine-tuned model packs each class into a tight cluster; the pretrained neighbourhoods keep near misses near.
    pretrained_weight: float = 0.0
    # Fine-tunes trained from seeds seed, seed + 1, ...: the model concatenates their unit embeddings (divided by
    # sqrt(members)), so similarity = the mean of theirs. Each member costs a training, and a backbone at search.
    members: int = 1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm's RandAugment, for inputs=images
    precision: str = "auto"  # auto: 16-mixed on a GPU, 32-true on a CPU
    accelerator: str = "auto"
    num_workers: int = 2
    seed: int = 0
    trainings: list[str] = field(default_factory=lambda: ["heldout", "unseen-classes"])


@dataclass
class PathsConfig:
    """Deterministic output locations (never Hydra's timestamped run folders)."""

    artifacts: str = "artifacts"
    reports: str = "reports"


@dataclass
class Config:
    """The whole composed configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    # The primary backbone: the one searched, served and fine-tuned (and the grid's, unless grid.backbones says more).
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Further backbones the grid may compare (grid.backbones), by name: conf/backbone/*.yaml composed under this key.
    backbones: dict[str, BackboneConfig] = field(default_factory=dict)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    indexes: dict[str, IndexConfig] = field(default_factory=dict)
    rerankers: dict[str, RerankerConfig] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


METRICS = ("euclidean", "angular")
REDUCE_METHODS = ("pca",)  # `full` in grid.dims keeps the embedding unreduced
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
POOLS = ("avg", "max", "gem")
EXTRACT_STRATEGIES = ("ddp_fork", "ddp_spawn")  # the launchers whose ranks the parent process outlives (it merges)
FINETUNE_DEPTHS = ("head", "blocks", "full")
FINETUNE_INPUTS = ("cached", "images")
FINETUNE_TRAININGS = ("heldout", "unseen-classes")


def load_config(raw: dict[str, Any] | DictConfig) -> Config:
    """Merge ``raw`` into the typed schema and check every value the schema can judge on its own.

    Single values of ``grid.dims`` and ``grid.indexes`` become one-element lists.

    Raises:
        ConfigError: naming the offending key (and the allowed values where there is a fixed set).
    """
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        known = known_keys(key)
        if known is not None and key.rsplit(".", 1)[-1] not in known:
            raise ConfigError(unknown_key_message(key, known)) from error
        message = str(getattr(error, "msg", error)).splitlines()[0]
        raise ConfigError(f"config key '{key}': {message}") from error
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.grid.backbones = _as_list(cfg.grid.backbones) or [cfg.backbone.name]
    cfg.grid.dims = _as_list(cfg.grid.dims)
    cfg.grid.indexes = _as_list(cfg.grid.indexes)
    validate(cfg)
    return cfg


def grid_backbone(cfg: Config, name: str) -> BackboneConfig:
    """The settings of ``name``, a backbone of ``grid.backbones``: the primary ``backbone``, or its catalogue entry.

    Raises:
        ConfigError: ``name`` is neither.
    """
    if name == cfg.backbone.name:
        return cfg.backbone
    if name in cfg.backbones:
        return cfg.backbones[name]
    raise ConfigError(f"backbone {name!r} is neither the primary backbone ({cfg.backbone.name}) nor a key of "
                      f"'backbones' ({', '.join(cfg.backbones) or 'empty'}): add it with "
                      f"+backbone@backbones.{name}={name}")


def with_backbone(cfg: Config, name: str) -> Config:
    """``cfg`` with ``name`` (a backbone of the grid) in the place of ``backbone``: what a grid stage runs on, so the
    paths, stores and reports it reads and writes are that backbone's."""
    return dataclasses.replace(cfg, backbone=grid_backbone(cfg, name))


def known_keys(key: str) -> list[str] | None:
    """The keys the schema allows beside ``key`` (its siblings), or None where any key is allowed (a dict)."""
    node: Any = Config
    for part in key.split(".")[:-1]:
        fields = {item.name: item for item in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        node = typing.get_type_hints(node)[part]
    return [item.name for item in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else None


def unknown_key_message(key: str, known: list[str]) -> str:
    """``key`` is not a config key: say so, with the close matches and every key allowed there."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=3)
    hint = f"; did you mean {' or '.join(repr(match) for match in close)}?" if close else ""
    return f"config key '{key}' does not exist{hint} (keys there: {', '.join(known)})"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {', '.join(map(str, allowed))}")


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"config key '{key}' is {value!r}; it must be a positive integer")


def _at_least_zero(key: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"config key '{key}' is {value!r}; it must be 0 or more")


def parse_dim(text: str, key: str = "--dim") -> Dim:
    """A dimension given on a command line (``"full"``, ``"auto"`` or an integer), checked."""
    return check_dim(key, int(text) if text.isdigit() else text)


def check_dim(key: str, dim: Any, *, allow_auto: bool = True) -> Dim:
    """Return the target dimension (None for full, ``"auto"`` as is), or raise naming ``key``."""
    if dim == FULL_DIM or dim is None:
        return None
    if dim == AUTO_DIM and allow_auto:
        return AUTO_DIM
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        auto = f", '{AUTO_DIM}' (the PCA sweep's choice)" if allow_auto else ""
        raise ConfigError(f"config key '{key}' is {dim!r}; allowed values: a positive integer, '{FULL_DIM}'{auto}")
    return dim


def dim_label(dim: Dim) -> str:
    """``100`` -> ``"100"``, ``None`` (full) -> ``"full"``, ``"auto"`` -> ``"auto"``: how a dimension is named in
    paths, tags and tables."""
    return FULL_DIM if dim is None else str(dim)


def _check_split(split: SplitConfig) -> None:
    for name in ("train", "val", "test"):
        share = getattr(split, name)
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"config key 'data.split.{name}' is {share!r}; it must be between 0 and 1")
    if split.train <= 0.0 or split.test <= 0.0:
        raise ConfigError("config keys 'data.split.train' and 'data.split.test' must both be above 0")
    total = split.train + split.val + split.test
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"config keys 'data.split.train/val/test' add up to {total:g}; they must add up to 1")


def validate(cfg: Config) -> None:
    """Check values that the schema's types cannot express (and that need no registry)."""
    _choice("reduce.method", cfg.reduce.method, REDUCE_METHODS)
    for name, index in cfg.indexes.items():
        _choice(f"indexes.{name}.metric", index.metric, METRICS)
        point = index.operating_point
        if point.target_recall is not None and not 0.0 < point.target_recall <= 1.0:
            raise ConfigError(f"config key 'indexes.{name}.operating_point.target_recall' is "
                              f"{point.target_recall!r}; it must be above 0 and at most 1 (or null)")
        _positive(f"indexes.{name}.operating_point.k", point.k)
        _positive(f"indexes.{name}.operating_point.queries", point.queries)
    if not cfg.grid.dims:
        raise ConfigError("config key 'grid.dims' is empty; name at least one dimension")
    if not cfg.grid.indexes:
        raise ConfigError("config key 'grid.indexes' is empty; name at least one key of 'indexes'")
    for position, dim in enumerate(cfg.grid.dims):
        check_dim(f"grid.dims[{position}]", dim)
    if cfg.reduce.fit_sample is not None:
        _positive("reduce.fit_sample", cfg.reduce.fit_sample)
    sweep = cfg.reduce.sweep
    if not sweep.dims or not sweep.whiten or not sweep.renormalize:
        raise ConfigError("config keys 'reduce.sweep.dims', '.whiten' and '.renormalize' each need a value")
    for position, dim in enumerate(sweep.dims):
        check_dim(f"reduce.sweep.dims[{position}]", dim, allow_auto=False)
    if sweep.within_points < 0:
        raise ConfigError(f"config key 'reduce.sweep.within_points' is {sweep.within_points}; it must be >= 0")
    for position, name in enumerate(cfg.grid.indexes):
        _choice(f"grid.indexes[{position}]", name, tuple(cfg.indexes))
    # search.dim and search.index need not be in the grid here (a sweep may change it); the searcher says when
    # the cell they name was not built.
    check_dim("search.dim", cfg.search.dim)
    _choice("search.index", cfg.search.index, tuple(cfg.indexes))
    _positive("search.k", cfg.search.k)
    if not cfg.eval.protocols:
        raise ConfigError("config key 'eval.protocols' is empty; name at least one protocol")
    _positive("eval.k", cfg.eval.k)
    for position, k in enumerate(cfg.eval.recall_ks):
        _positive(f"eval.recall_ks[{position}]", k)
    _positive("eval.ann_recall_k", cfg.eval.ann_recall_k)
    if cfg.eval.query_sample.size is not None:
        _positive("eval.query_sample.size", cfg.eval.query_sample.size)
    _positive("eval.latency.queries", cfg.eval.latency.queries)
    _positive("eval.latency.threads", cfg.eval.latency.threads)
    _at_least_zero("eval.latency.warmup", cfg.eval.latency.warmup)
    if NO_RERANK in cfg.rerankers:
        raise ConfigError(f"config key 'rerankers.{NO_RERANK}': '{NO_RERANK}' names the rows without re-ranking; "
                          "pick another name")
    for position, name in enumerate(cfg.eval.rerank.rerankers):
        _choice(f"eval.rerank.rerankers[{position}]", name, tuple(cfg.rerankers))
    for position, name in enumerate(cfg.eval.rerank.indexes):
        _choice(f"eval.rerank.indexes[{position}]", name, tuple(cfg.indexes))
    _check_backbone("backbone", cfg.backbone)
    for name, backbone in cfg.backbones.items():
        if name == cfg.backbone.name:
            raise ConfigError(f"config key 'backbones.{name}' repeats the primary backbone; set backbone.* instead")
        if backbone.name != name:
            raise ConfigError(f"config key 'backbones.{name}.name' is {backbone.name!r}; a catalogue entry is keyed "
                              f"by its model's name: use backbones.{backbone.name}")
        _check_backbone(f"backbones.{name}", backbone)
    if len(set(cfg.grid.backbones)) != len(cfg.grid.backbones):
        raise ConfigError(f"config key 'grid.backbones' names a backbone twice: {cfg.grid.backbones}")
    for position, name in enumerate(cfg.grid.backbones):
        _choice(f"grid.backbones[{position}]", name, (cfg.backbone.name, *cfg.backbones))
    if cfg.backbone.name not in cfg.grid.backbones:
        raise ConfigError(f"config key 'grid.backbones' leaves out the primary backbone {cfg.backbone.name}, which "
                          "the fine-tune and `ris search` use: list it, or make another one primary with "
                          "backbone=NAME")
    _check_split(cfg.data.split)
    _check_finetune(cfg.finetune, cfg.backbone)
    if not (cfg.data.url or cfg.data.archive or cfg.data.source_dir or _env_source()):
        raise ConfigError("config keys 'data.url', 'data.archive' and 'data.source_dir' are all empty; set one")


def _check_backbone(key: str, backbone: BackboneConfig) -> None:
    _positive(f"{key}.batch_size", backbone.batch_size)
    _at_least_zero(f"{key}.num_workers", backbone.num_workers)
    _choice(f"{key}.precision", backbone.precision, PRECISIONS)
    _choice(f"{key}.accelerator", backbone.accelerator, ACCELERATORS)
    if backbone.devices != "auto":
        if isinstance(backbone.devices, bool) or not isinstance(backbone.devices, int):
            raise ConfigError(f"config key '{key}.devices' is {backbone.devices!r}; give a number or auto")
        _positive(f"{key}.devices", backbone.devices)
    _choice(f"{key}.strategy", backbone.strategy, EXTRACT_STRATEGIES)
    if backbone.pool is not None:
        _choice(f"{key}.pool", backbone.pool, POOLS)
    if backbone.gem_p <= 0:
        raise ConfigError(f"config key '{key}.gem_p' is {backbone.gem_p!r}; it must be above 0")


def _check_finetune(finetune: FinetuneConfig, backbone: BackboneConfig) -> None:
    _choice("finetune.depth", finetune.depth, FINETUNE_DEPTHS)
    _choice("finetune.inputs", finetune.inputs, FINETUNE_INPUTS)
    if finetune.depth == "full" and finetune.inputs == "cached":
        raise ConfigError("config key 'finetune.inputs' is 'cached', but finetune.depth=full trains every layer, so "
                          "nothing can be computed once: set finetune.inputs=images")
    if finetune.depth == "blocks" and not backbone.tail_from:
        raise ConfigError(f"config key 'backbone.tail_from' is empty, but finetune.depth=blocks needs it: name the "
                          f"module where {backbone.name}'s last blocks begin (or use finetune.depth=head)")
    if finetune.depth == "head" and finetune.inputs == "images":
        raise ConfigError("config key 'finetune.inputs' is 'images', but finetune.depth=head trains only the "
                          "projection, on the frozen backbone's stored embeddings: set finetune.inputs=cached (or "
                          "finetune.depth=blocks or full to train on augmented images)")
    if finetune.depth == "head" and finetune.embedding_dim is None:
        raise ConfigError("config key 'finetune.embedding_dim' is null, but finetune.depth=head trains only the "
                          "projection: give it a width")
    if finetune.embedding_dim is not None:
        _positive("finetune.embedding_dim", finetune.embedding_dim)
    for key in ("epochs", "batch_size", "members"):
        _positive(f"finetune.{key}", getattr(finetune, key))
    for key in ("warmup_epochs", "patience", "num_workers"):
        _at_least_zero(f"finetune.{key}", getattr(finetune, key))
    for key in ("lr", "backbone_lr"):
        if getattr(finetune, key) <= 0:
            raise ConfigError(f"config key 'finetune.{key}' is {getattr(finetune, key)!r}; it must be above 0")
    if not 0 <= finetune.pretrained_weight < 1:
        raise ConfigError(f"config key 'finetune.pretrained_weight' is {finetune.pretrained_weight!r}; it must be "
                          "at least 0 and below 1 (1 would leave only the pretrained embedding)")
    _choice("finetune.precision", finetune.precision, ("auto", *PRECISIONS))
    _choice("finetune.accelerator", finetune.accelerator, ACCELERATORS)
    for position, training in enumerate(finetune.trainings):
        _choice(f"finetune.trainings[{position}]", training, FINETUNE_TRAININGS)


def _env_source() -> str | None:
    return os.environ.get("RIS_DATA_ARCHIVE") or os.environ.get("RIS_DATA_DIR")


def read_config_file(path: str | Path = "params.yaml") -> Config:
    """Load ``params.yaml`` (the composed config `dvc repro` runs from) and check it against the schema."""
    if not Path(path).is_file():
        raise ConfigError(f"{path} not found: run from the repository root, or write it with `ris compose`")
    return load_config(OmegaConf.load(path))
