"""One grid cell (backbone x dimension x index): reduce -> index -> evaluate -> track, in one place.

:func:`run_cell` chains the steps in memory for `ris run`; the DVC stages run the same steps one at a time and save
the stores between them (reduce: :meth:`ReducedStore.fit`; index: :meth:`IndexStore.build`; evaluate:
:func:`evaluate_cell` and :func:`track_cell`). Two entry points, one behaviour.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ris.config import AUTO_DIM, NO_RERANK, Config, ConfigError, Dim, IndexConfig, dim_label, parse_dim
from ris.embed.store import FeatureSet
from ris.evaluate.declarations import cell_metrics
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.latency import measure_latency
from ris.evaluate.protocols import PROTOCOLS, QuerySet, sample_queries
from ris.evaluate.reranked import RerankResult, evaluate_rerankers
from ris.index.base import NearestNeighbourIndex
from ris.index.store import IndexStore
from ris.paths import PipelinePaths
from ris.reduce import ReducedStore
from ris.reduce.choice import read_chosen_dim
from ris.tracking import flatten, git_commit, log_run


@dataclass(frozen=True)
class Cell:
    """What one cell evaluates: ``index_name`` is a key of the ``indexes`` catalogue, ``index`` its settings."""

    backbone: str
    dim: Dim  # a number, None (full) or "auto"
    index_name: str
    index: IndexConfig

    @property
    def name(self) -> str:
        return f"{self.backbone}/{dim_label(self.dim)}/{self.index_name}"


@dataclass
class CellResult:
    """A cell's metrics: per protocol (accuracy) and of the cell itself (dimension, index, latency), and those of
    each reranker measured on it (``eval.rerank``)."""

    cell: Cell
    protocols: dict[str, dict[str, float]]
    cell_metrics: dict[str, float]
    reranked: list[RerankResult] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The metrics file's content (DVC metrics: nested keys, one file per cell)."""
        return {"backbone": self.cell.backbone, "dim": dim_label(self.cell.dim), "index": self.cell.index_name,
                "family": self.cell.index.family, "protocols": self.protocols, "cell": self.cell_metrics,
                "rerank": {result.name: result.report() for result in self.reranked}}


def grid_cell(cfg: Config, dim: Dim, index_name: str) -> Cell:
    """The cell ``(dim, index_name)``: settings from ``indexes.<index_name>``."""
    if index_name not in cfg.indexes:
        raise ConfigError(f"index {index_name!r} is not a key of 'indexes'; known: {', '.join(cfg.indexes)}")
    parsed = parse_dim(dim) if isinstance(dim, str) else dim
    return Cell(cfg.backbone.name, parsed, index_name, cfg.indexes[index_name])


def grid_cells(cfg: Config) -> list[Cell]:
    """Every cell of ``grid.dims`` x ``grid.indexes``, in grid order."""
    return [grid_cell(cfg, str(dim), name) for dim in cfg.grid.dims for name in cfg.grid.indexes]


def evaluate_cell(cell: Cell, reduced: ReducedStore, index: IndexStore, labels: np.ndarray,
                  splits: np.ndarray | None, cfg: Config, *, rerank: bool = True) -> CellResult:
    """Every configured protocol on the cell, plus the cell's own metrics (dimension, build, size, latency).

    A protocol whose gallery is not the whole collection (``heldout``) gets an index of the same family and
    settings built over its gallery alone, so that no query can find itself. With ``rerank`` (the PCA sweep has
    none), each reranker ``eval.rerank`` names for the cell's index is measured too, on the same indexes.
    """
    vectors = np.ascontiguousarray(reduced.vectors, dtype=np.float32)
    protocols = {}
    searched_by: dict[str, tuple[NearestNeighbourIndex, QuerySet]] = {}
    for name in cfg.eval.protocols:
        sample = cfg.eval.query_sample
        query_set = sample_queries(PROTOCOLS[name].select(labels, splits), sample.size, sample.seed)
        searched = index.index
        if not query_set.gallery_is_everything(len(vectors)):
            searched = IndexStore.build(vectors[query_set.gallery], cell.index, {}).index
        searched_by[name] = (searched, query_set)
        protocols[name] = evaluate_queries(searched, vectors, labels, query_set, cfg.eval)
    measured = {"vector_dim": reduced.reducer.output_dim, "explained_variance": reduced.reducer.explained_variance,
                "index_build_seconds": index.build_seconds, "index_bytes": index.index_bytes,
                **measure_latency(index.index, vectors, cfg.eval.latency, cfg.eval.ann_recall_k)}
    reranked = evaluate_rerankers(cell.index_name, index.index, vectors, labels, searched_by, cfg) if rerank else []
    return CellResult(cell, protocols, {spec.key: measured[spec.key] for spec in cell_metrics()}, reranked)


def track_cell(cfg: Config, result: CellResult, *, source: str, features_key: str,
               artifacts: list[Path] | None = None) -> list[str | None]:
    """Log one MLflow run per protocol: the same metric names for every protocol, told apart by a ``protocol`` tag,
    with the cell's effective settings and feature-store key as params (the same for `dvc repro` and `ris run`).

    Each reranker measured on the cell gets its own run per protocol, with the same metric names (its latency in
    place of the index's) and a ``rerank`` tag (``none`` on the index's own runs), so the MLflow UI lines reranked
    and plain runs up in one table and one chart.
    """
    cell = result.cell
    params = flatten({"data": {"name": cfg.data.name, "exclude_classes": cfg.data.exclude_classes,
                               "split": asdict(cfg.data.split)},
                      "backbone": asdict(cfg.backbone), "reduce": {**asdict(cfg.reduce), "dim": dim_label(cell.dim)},
                      "index": {"name": cell.index_name, **asdict(cell.index)}, "eval": asdict(cfg.eval)})
    params["features.key"] = features_key
    run_ids = []
    for protocol, metrics in result.protocols.items():
        tags = {"backbone": cell.backbone, "dim": dim_label(cell.dim), "index": cell.index_name,
                "algorithm": cell.index.family, "protocol": protocol, "git_commit": git_commit(), "source": source,
                "rerank": NO_RERANK}
        run_ids.append(log_run(cfg.tracking, f"{cell.name}/{protocol}", params, {**metrics, **result.cell_metrics},
                               tags, artifacts))
    for reranked in result.reranked:
        rerank_params = {**params, **flatten({"rerank": {"name": reranked.name, "method": reranked.method,
                                                         "params": reranked.params}})}
        for protocol, metrics in reranked.protocols.items():
            tags = {"backbone": cell.backbone, "dim": dim_label(cell.dim), "index": cell.index_name,
                    "algorithm": cell.index.family, "protocol": protocol, "git_commit": git_commit(),
                    "source": source, "rerank": reranked.name}
            run_ids.append(log_run(cfg.tracking, f"{cell.name}+{reranked.name}/{protocol}", rerank_params,
                                   {**metrics, **result.cell_metrics, **reranked.metrics}, tags, artifacts))
    return run_ids


def run_cell(cfg: Config, cell: Cell, features: FeatureSet, splits: np.ndarray) -> CellResult:
    """Reduce, index and evaluate ``cell`` in memory (the index is saved to a scratch folder to measure its size)."""
    target = cell.dim
    if target == AUTO_DIM:  # the dimension the pca_sweep stage chose for these very features
        target = read_chosen_dim(PipelinePaths(cfg).pca_choice, features.key)
    assert not isinstance(target, str)
    reduced = ReducedStore.fit(features, target, cfg.reduce, splits, label=dim_label(cell.dim))
    index = IndexStore.build(reduced.vectors, cell.index, {**reduced.built_from, "index": cell.index_name})
    with tempfile.TemporaryDirectory(prefix="ris-index-") as scratch:
        index.save(Path(scratch))
    return evaluate_cell(cell, reduced, index, features.labels, splits, cfg)
