"""The PCA sweep: how accuracy and exact-search latency change with the reduced dimension, and which to use.

One PCA is fitted (on the split's train and val images, or the same seeded sample of them that the ``reduce``
stage uses: ``reduce.fit_sample``) to the largest dimension swept; every smaller one is its truncation, since
PCA's components are nested. Each dimension is evaluated with exact search, plain, whitened and renormalised, under
every protocol, by the same :func:`ris.cell.evaluate_cell` the grid uses; the rule in ``reduce.sweep`` then picks
the dimension.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ris.cell import Cell, evaluate_cell
from ris.config import Config, ConfigError, IndexConfig, check_dim, dim_label
from ris.embed.store import FeatureSet
from ris.index.store import IndexStore
from ris.progress import progress as ris_progress
from ris.reduce.pca import FeatureReducer, fit_reducer, sample_rows
from ris.reduce.store import ReducedStore

log = logging.getLogger("ris.pca_sweep")

COLUMNS = ["dim", "vector_dim", "whiten", "renormalize", "protocol"]
"""What identifies a row of the sweep table; the metric columns follow."""


@dataclass
class SweepResult:
    """One row per dimension x whiten x renormalize x protocol, and the dimension the rule chose."""

    table: pd.DataFrame
    choice: dict[str, Any]


def sweep_reducers(features: FeatureSet, splits: np.ndarray, cfg: Config) -> list[FeatureReducer]:
    """Every reducer the sweep evaluates, in table order (whiten, renormalize, then dimension).

    ``full`` keeps the embedding, so it is never whitened (only renormalised, when asked).

    Raises:
        ConfigError: a swept dimension is more than PCA can give.
    """
    sweep = cfg.reduce.sweep
    dims = [check_dim(f"reduce.sweep.dims[{position}]", dim, allow_auto=False)
            for position, dim in enumerate(sweep.dims)]
    numeric = sorted({dim for dim in dims if dim is not None})
    sample = sample_rows(np.flatnonzero(splits != "test"), cfg.reduce.fit_sample, cfg.reduce.seed)
    limit = min(len(sample), features.embeddings.shape[1])
    if numeric and numeric[-1] > limit:
        raise ConfigError(f"config key 'reduce.sweep.dims' holds {numeric[-1]}, more than PCA can give here "
                          f"(min(train+val rows fitted on, embedding width) = {limit})")
    largest = None
    if numeric:  # only the sample is read into memory
        largest = fit_reducer(features.embeddings[sample], numeric[-1], method=cfg.reduce.method,
                              seed=cfg.reduce.seed)
    width = features.embeddings.shape[1]
    reducers = []
    for whiten in sweep.whiten:
        for renormalize in sweep.renormalize:
            for dim in sorted(dims, key=lambda value: width if value is None else value):
                if dim is None:
                    if not whiten:
                        reducers.append(FeatureReducer(width, width, renormalize=renormalize))
                    continue
                assert largest is not None
                reducers.append(largest.truncated(dim, whiten=whiten, renormalize=renormalize))
    return reducers


def sweep_pca(features: FeatureSet, splits: np.ndarray, cfg: Config, *, progress: bool = True) -> SweepResult:
    """Evaluate exact search after every reducer of :func:`sweep_reducers`; choose the dimension by the rule."""
    rows = []
    exact = IndexConfig("brute")
    reducers = sweep_reducers(features, splits, cfg)
    for reducer in ris_progress(reducers, f"PCA sweep {cfg.backbone.name}", len(reducers), "settings",
                                enabled=progress):
        dim = None if reducer.components is None else reducer.output_dim
        reduced = ReducedStore(reducer, reducer.transform(features.embeddings), {"dim": dim_label(dim)})
        index = IndexStore.build(reduced.vectors, exact, {})
        cell = Cell(cfg.backbone.name, dim, "brute", exact)
        result = evaluate_cell(cell, reduced, index, features.labels, splits, cfg, rerank=False)
        for protocol, metrics in result.protocols.items():
            rows.append({"dim": dim_label(dim), "vector_dim": reducer.output_dim, "whiten": reducer.whiten,
                         "renormalize": reducer.renormalize, "protocol": protocol, **metrics,
                         "explained_variance": reducer.explained_variance,
                         **{key: result.cell_metrics[key] for key in ("latency_p50_us", "latency_p95_us", "qps")}})
    table = pd.DataFrame(rows)
    return SweepResult(table, choose_dimension(table, cfg))


def choose_dimension(table: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """Apply ``reduce.sweep``'s rule to the rows of the pipeline's own whiten / renormalize setting.

    Also records the best setting of the whole sweep, so a report can say what whitening or renormalising buys.
    """
    sweep = cfg.reduce.sweep
    metric, protocol, tolerance = sweep.choose_metric, sweep.choose_protocol, sweep.within_points / 100
    of_protocol = table[table["protocol"] == protocol]
    own = of_protocol[(of_protocol["whiten"] == cfg.reduce.whiten)
                      & (of_protocol["renormalize"] == cfg.reduce.renormalize)]
    if own.empty:
        raise ConfigError(f"reduce.sweep does not evaluate the pipeline's own setting (reduce.whiten="
                          f"{cfg.reduce.whiten}, reduce.renormalize={cfg.reduce.renormalize}); add it to "
                          "reduce.sweep.whiten / reduce.sweep.renormalize")
    best = own.loc[own[metric].idxmax()]
    chosen = own[own[metric] >= best[metric] - tolerance].sort_values("vector_dim").iloc[0]
    overall = of_protocol.loc[of_protocol[metric].idxmax()]
    return {
        "rule": f"the smallest dimension within {sweep.within_points:g} points of the best {metric} under "
                f"{protocol} (whiten={cfg.reduce.whiten}, renormalize={cfg.reduce.renormalize})",
        "metric": metric, "protocol": protocol, "whiten": cfg.reduce.whiten, "renormalize": cfg.reduce.renormalize,
        "dim": _dim_value(chosen["dim"]), "value": float(chosen[metric]),
        "latency_p50_us": float(chosen["latency_p50_us"]),
        "best_dim": _dim_value(best["dim"]), "best_value": float(best[metric]),
        "best_overall": {"dim": _dim_value(overall["dim"]), "whiten": bool(overall["whiten"]),
                         "renormalize": bool(overall["renormalize"]), "value": float(overall[metric])},
    }


def _dim_value(label: str) -> int | str:
    return label if label == "full" else int(label)


def plot_sweep(table: pd.DataFrame, cfg: Config, folder: Path) -> list[Path]:
    """Accuracy and latency against dimension (one line per whiten / renormalize setting), as PNGs in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metric = cfg.reduce.sweep.choose_metric
    protocols = list(dict.fromkeys(table["protocol"]))
    settings = list(dict.fromkeys(zip(table["whiten"], table["renormalize"], strict=True)))
    accuracy, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.2), squeeze=False)
    for axis, protocol in zip(axes[0], protocols, strict=True):
        for whiten, renormalize in settings:
            rows = table[(table["protocol"] == protocol) & (table["whiten"] == whiten)
                         & (table["renormalize"] == renormalize)].sort_values("vector_dim")
            axis.plot(rows["vector_dim"], 100 * rows[metric], marker="o", label=_setting(whiten, renormalize))
        axis.set(xscale="log", xlabel="dimension", ylabel=f"{metric} (%)", title=f"protocol {protocol}")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    latency, axis = plt.subplots(figsize=(6, 4.2))
    rows = table[(table["protocol"] == protocols[0]) & ~table["whiten"] & ~table["renormalize"]]
    rows = rows.sort_values("vector_dim")
    axis.plot(rows["vector_dim"], rows["latency_p50_us"], marker="o", label="p50")
    axis.plot(rows["vector_dim"], rows["latency_p95_us"], marker=".", linestyle="--", label="p95")
    axis.set(xscale="log", yscale="log", xlabel="dimension", ylabel="µs per query (exact, one thread)",
             title="exact-search latency")
    axis.grid(alpha=0.3)
    axis.legend()
    written = []
    for figure, name in ((accuracy, "accuracy.png"), (latency, "latency.png")):
        path = folder / name
        figure.tight_layout()
        figure.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: same input, same bytes
        plt.close(figure)
        written.append(path)
    return written


def _setting(whiten: bool, renormalize: bool) -> str:
    return {(False, False): "PCA", (False, True): "PCA + L2", (True, False): "whitened",
            (True, True): "whitened + L2"}[(bool(whiten), bool(renormalize))]
