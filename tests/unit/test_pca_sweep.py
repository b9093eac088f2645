"""The PCA sweep: nested truncations equal fits, the rule picks the smallest good dimension, the stage's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_PIPELINE, build_tiny_pipeline

from ris.artifacts import ArtifactError
from ris.cell import grid_cell
from ris.checks import read_params
from ris.config import ConfigError
from ris.embed.store import load_features
from ris.pca_sweep import choose_dimension
from ris.reduce.pca import fit_reducer
from ris.search.searcher import Searcher
from ris.stages import evaluate, index, pca_sweep, reduce


def _features(rows: int = 200, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, dim)) * np.linspace(3.0, 0.1, dim)).astype(np.float32)


def test_a_truncated_pca_equals_a_pca_fitted_to_that_dimension() -> None:
    features = _features()
    wide = fit_reducer(features, 16)
    for whiten in (False, True):
        for renormalize in (False, True):
            fitted = fit_reducer(features, 8, whiten=whiten, renormalize=renormalize)
            truncated = wide.truncated(8, whiten=whiten, renormalize=renormalize)
            np.testing.assert_allclose(truncated.transform(features), fitted.transform(features), rtol=1e-4,
                                       atol=1e-5)


def test_whitening_and_renormalising_do_what_they_say() -> None:
    features = _features()
    whitened = fit_reducer(features, 8, whiten=True).transform(features)
    np.testing.assert_allclose(whitened.std(axis=0, ddof=1), 1.0, rtol=1e-3)
    renormalised = fit_reducer(features, 8, renormalize=True).transform(features)
    np.testing.assert_allclose(np.linalg.norm(renormalised, axis=1), 1.0, rtol=1e-5)
    kept = fit_reducer(features, None, renormalize=True).transform(features)  # full: the embedding, renormalised
    np.testing.assert_allclose(kept, features / np.linalg.norm(features, axis=1, keepdims=True), rtol=1e-5)


def _config(**sweep: object):  # type: ignore[no-untyped-def]
    from ris.cli import compose_config

    overrides = [f"reduce.sweep.{key}={value}" for key, value in sweep.items()]
    return compose_config([f"data.source_dir={Path.cwd()}", *overrides])[1]


def test_the_rule_takes_the_smallest_dimension_within_the_tolerance() -> None:
    rows = [(8, 0.40), (16, 0.52), (32, 0.558), (64, 0.561), (128, 0.556)]
    table = pd.DataFrame([{"dim": str(dim), "vector_dim": dim, "whiten": whiten, "renormalize": False,
                           "protocol": "heldout", "map_at_r": value + (0.01 if whiten else 0.0),
                           "latency_p50_us": float(dim)}
                          for dim, value in rows for whiten in (False, True)])
    choice = choose_dimension(table, _config(within_points=0.5))
    assert (choice["dim"], choice["best_dim"]) == (32, 64)  # 55.8 is within 0.5 points of 56.1; 52.0 is not
    assert choice["best_overall"] == {"dim": 64, "whiten": True, "renormalize": False, "value": pytest.approx(0.571)}
    assert choose_dimension(table, _config(within_points=0))["dim"] == 64
    assert choose_dimension(table, _config(within_points=10))["dim"] == 16  # 52.0 is within 10 points, 40.0 is not


def test_a_metric_that_is_not_an_accuracy_is_refused() -> None:
    with pytest.raises(ConfigError, match="reduce.sweep.choose_metric' is 'queries'; allowed values: precision_at_4"):
        _config(choose_metric="queries")
    with pytest.raises(ConfigError, match=r"choose_protocol' is 'nope'; allowed values \(eval\.protocols\): book"):
        _config(choose_protocol="nope")


def test_the_stage_writes_the_table_the_choice_and_the_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = build_tiny_pipeline(tmp_path, ["tracking.enabled=false", "reduce.sweep.dims=[2,4,8,full]"])
    monkeypatch.chdir(tmp_path)
    cfg = read_params(params)
    with pytest.raises(ArtifactError, match="choice.json not found, and the dimension 'auto' is the PCA sweep's"):
        reduce.run(cfg, "auto")
    choice = pca_sweep.run(cfg)

    folder = tmp_path / "reports/pca/test_efficientnet"
    table = pd.read_csv(folder / "sweep.csv")
    settings = {(row.dim, row.whiten, row.renormalize) for row in table.itertuples()}
    assert settings == {(dim, whiten, renormalize) for dim in ("2", "4", "8", "full") for whiten in (False, True)
                        for renormalize in (False, True) if not (dim == "full" and whiten)}
    assert len(table) == len(settings) * 2 and set(table["protocol"]) == {"book", "heldout"}
    assert table["map_at_r"].between(0, 1).all() and (table["latency_p50_us"] > 0).all()
    assert (table["ann_recall_at_10"] == 1.0).all()  # exact search throughout

    plain = table[(table["protocol"] == "heldout") & ~table["whiten"] & ~table["renormalize"]]
    best = plain["map_at_r"].max()
    expected = plain[plain["map_at_r"] >= best - 0.005].sort_values("vector_dim").iloc[0]["dim"]
    assert str(choice["dim"]) == expected
    assert json.loads((folder / "choice.json").read_text())["dim"] == choice["dim"]
    assert sorted(path.name for path in (folder / "plots").iterdir()) == ["accuracy.png", "latency.png"]

    # `auto` downstream: reduced to the chosen dimension, named `auto` in paths, tables and the searcher.
    raw = yaml.safe_load(params.read_text())
    raw["grid"]["dims"] = ["full", 8, "auto"]
    params.write_text(yaml.safe_dump(raw))
    cfg = read_params(params)
    width = load_features(tmp_path / "artifacts/features/test_efficientnet").embeddings.shape[1]
    reduced = reduce.run(cfg, "auto")
    assert reduced["dim"] == (width if choice["dim"] == "full" else choice["dim"])
    index.run(cfg, "auto", "brute")
    report = evaluate.run(cfg, grid_cell(cfg, "auto", "brute"))
    assert report["dim"] == "auto" and report["cell"]["vector_dim"] == reduced["dim"]
    searcher = Searcher.from_pipeline(cfg, "auto", "brute")
    assert searcher.description.endswith(f"/ auto = {reduced['dim']} / brute")

    raw = yaml.safe_load(params.read_text())
    raw["reduce"]["sweep"]["dims"] = [4096]  # more than PCA can give: one clear line, before any work
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="reduce.sweep.dims' holds 4096, more than PCA can give"):
        pca_sweep.run(read_params(params))


def test_ris_run_evaluates_auto_at_the_sweeps_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ris run grid.dims=auto` uses the dimension the pca_sweep stage chose for these very features."""
    from ris.cli import main

    params = build_tiny_pipeline(tmp_path, ["reduce.sweep.dims=[2,4,8]"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = [f"data.source_dir={tmp_path / 'source'}", *TINY_PIPELINE, "reduce.sweep.dims=[2,4,8]",
                 "grid.dims=auto", "grid.indexes=brute", "hydra.run.dir=outputs"]
    with pytest.raises(SystemExit, match="ris run: .*choice.json not found, and the dimension 'auto'"):
        main(["run", *overrides])
    choice = pca_sweep.run(read_params(params))
    main(["run", *overrides])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ris").experiment_id],
                              "tags.source = 'hydra' and tags.rerank = 'none'")  # the index's own runs
    assert sorted(run.data.tags["protocol"] for run in runs) == ["book", "heldout"]
    assert {(run.data.tags["dim"], run.data.metrics["vector_dim"]) for run in runs} == {("auto", choice["dim"])}
