"""`dvc repro` in a temporary copy of the repository, on a tiny synthetic collection with a tiny timm model."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import make_image_tree

from ris.cli import compose_params

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
# A tiny timm model with random weights, small latency samples: the real code path in seconds.
TINY_OVERRIDES = ["data.exclude_classes=[class_03]", "backbone.name=test_efficientnet", "backbone.pretrained=false",
                  "backbone.num_workers=0", "backbone.batch_size=8", "eval.latency.queries=50",
                  "eval.latency.warmup=5", "indexes.annoy.params.n_trees=5",
                  "grid.indexes=[brute,annoy]", "reduce.sweep.dims=[2,4,full]",  # every family: test_index
                  # Two val images per class, so val MAP@R (the fine-tune's checkpoint selection) is defined; the
                  # unseen-classes training needs more classes than three (tests/unit/test_finetune.py has it).
                  "data.split.train=0.5", "data.split.val=0.34", "data.split.test=0.16",
                  "backbone.tail_from=blocks.4", "finetune.trainings=[heldout]", "finetune.epochs=2",
                  "finetune.batch_size=4", "finetune.embedding_dim=8", "finetune.num_workers=0"]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # The copy's own code and conf/ (PYTHONPATH wins over the editable install of the main checkout).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RIS_CONF_DIR", None)  # the copy's own conf/, read from its working directory
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo whose params point at a 4-class synthetic set; `dvc repro` has run in it once."""
    work = tmp_path_factory.mktemp("repo")
    for name in ("conf", "src", "dvc.yaml", "pyproject.toml", ".dvc/config", ".dvcignore", ".gitignore",
                 "data/additions/README.md"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    images = make_image_tree(tmp_path_factory.mktemp("collection"), classes=4, per_class=6)
    compose_params([f"data.source_dir={images}", *TINY_OVERRIDES, "grid.dims=[full,8]"], out=work / "params.yaml",
                   conf_dir=work / "conf")
    _run(["git", "init", "-q"], work)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], work)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], work)
    repro = _run(["dvc", "repro"], work)
    (work / "repro.log").write_text(repro.stdout + repro.stderr)
    return work


def test_repro_logs_each_stage_in_one_closing_line_without_third_party_noise(reproduced: Path) -> None:
    log = (reproduced / "repro.log").read_text()
    for stage in ("download", "split", "extract", "pca_sweep", "reduce", "index", "evaluate", "report", "finetune",
                  "finetune_report", "visualise", "results"):
        assert f"stage {stage} done in " in log, f"no closing line for {stage}"
    closing = next(line for line in log.splitlines() if "stage extract done in " in line)
    assert "read data/" in closing and "wrote artifacts/features/test_efficientnet (" in closing
    assert "18 images x " in closing and "18 embedded at " in closing
    for noise in ("GPU available", "TPU available", "LeafSpec", "Tip:", "does not have many workers",
                  "distributed_backend"):
        assert noise not in log, f"third-party noise in the repro's log: {noise!r}"
    assert "\r" not in log  # progress in a log file is lines, not a redrawn bar


def test_repro_writes_every_output(reproduced: Path) -> None:
    data = json.loads((reproduced / "reports/data.json").read_text())
    assert data["images"] == 24 and data["classes"] == 4 and data["skipped"] == 0
    extract = json.loads((reproduced / "reports/extract/test_efficientnet.json").read_text())
    assert extract["images"] == 18 and extract["excluded_images"] == 6 and extract["images_per_second"] > 0
    assert extract["weights"]["kind"] == "random" and extract["preprocessing"]["input_size"] == [3, 160, 160]
    features = reproduced / "artifacts/features/test_efficientnet"
    assert pd.read_parquet(features / "rows.parquet")["class"].nunique() == 3
    assert json.loads((reproduced / "reports/split.json").read_text())["images"] == {"train": 9, "val": 6, "test": 3}
    for dim in ("full", "8"):
        assert (reproduced / f"artifacts/reduced/test_efficientnet/{dim}/reduced.json").exists()
        for index in ("brute", "annoy"):
            assert (reproduced / f"artifacts/indexes/test_efficientnet/{dim}/{index}/index.json").exists()
    figures = reproduced / "reports/visualise/test_efficientnet"
    assert sorted(path.name for path in figures.iterdir()) == ["bad.png", "examples.json", "good.png", "map.csv",
                                                                "pca.png", "tsne.png"]
    assert len(pd.read_csv(figures / "map.csv")) == 18
    examples = json.loads((figures / "examples.json").read_text())
    # search.dim (auto) is not in this grid: the grid's first dimension is drawn, as the summary does.
    assert examples["dim"] == "full" and examples["good"] and examples["bad"]
    page = (reproduced / "reports/results.md").read_text()
    headings = ["## Beside the book", "## Backbones", "## Feature length", "## Search algorithms", "## Fine-tuning"]
    assert [page.index(heading) for heading in headings] == sorted(page.index(heading) for heading in headings)
    assert (reproduced / "reports/recall-qps.png").stat().st_size > 10_000
    results = pd.read_csv(reproduced / "reports/results.csv")
    rows = zip(results["dim"].astype(str), results["index"], results["rerank"], results["protocol"], strict=True)
    # eval.rerank measures its rerankers on brute cells: their rows follow the cell's own.
    assert sorted(rows) == sorted((dim, index, rerank, protocol) for dim in ("8", "full")
                                  for index in ("annoy", "brute")
                                  for rerank in (["none", "aqe", "k_reciprocal"] if index == "brute" else ["none"])
                                  for protocol in ("book", "heldout"))


def test_metrics_are_sane_and_exact_search_has_full_recall(reproduced: Path) -> None:
    extract_dim = json.loads((reproduced / "reports/extract/test_efficientnet.json").read_text())["dim"]
    for dim in ("full", "8"):
        brute = json.loads((reproduced / f"reports/metrics/test_efficientnet/{dim}-brute.json").read_text())
        annoy = json.loads((reproduced / f"reports/metrics/test_efficientnet/{dim}-annoy.json").read_text())
        for protocol, queries, gallery in (("book", 18, 18), ("heldout", 3, 15)):
            # The saved, reloaded index against a fresh exact search.
            assert brute["protocols"][protocol]["ann_recall_at_10"] == 1.0
            assert 0.0 <= annoy["protocols"][protocol]["ann_recall_at_10"] <= 1.0
            for report in (brute, annoy):
                metrics = report["protocols"][protocol]
                assert 0.0 <= metrics["precision_at_4"] <= 1.0 and 0.0 <= metrics["recall_at_5"] <= 1.0
                assert metrics["queries"] == queries and metrics["gallery_size"] == gallery
        for report in (brute, annoy):
            assert report["cell"]["qps"] > 0 and report["cell"]["vector_dim"] == (8 if dim == "8" else extract_dim)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], reproduced).stdout)
    cell = shown[""]["data"]["reports/metrics/test_efficientnet/8-annoy.json"]["data"]
    assert set(cell["protocols"]) == {"book", "heldout"} and "map_at_r" in cell["protocols"]["heldout"]


def test_dvc_plots_are_declared_at_paths_that_compare_across_experiments(reproduced: Path) -> None:
    shown = json.loads(_run(["dvc", "plots", "show", "--json"], reproduced).stdout)
    assert {"pca-accuracy", "pca-latency", "finetune-curves", "reports/visualise/test_efficientnet/tsne.png",
            "reports/visualise/test_efficientnet/bad.png"} <= set(shown["data"])
    accuracy = shown["data"]["pca-accuracy"][0]["content"]
    assert accuracy["title"]["text"].startswith("PCA sweep") and accuracy["data"]["values"]
    # This tiny pipeline trains `heldout` only: the other training's curve is the one file missing.
    errors = shown.get("errors", [])
    assert [(error["name"], error["source"]) for error in errors] == [
        ("finetune-curves", "reports/finetune/test_efficientnet/trainings/unseen-classes-history.csv")]


def test_mlflow_has_one_tagged_run_per_cell_and_protocol(reproduced: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{reproduced / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ris")
    every_run = client.search_runs([experiment.experiment_id])
    sweeps = [run for run in every_run if run.data.tags.get("stage") == "pca_sweep"]
    assert len(sweeps) == 1 and sweeps[0].data.metrics["chosen_dim"] >= 1  # the PCA sweep's own run
    tuned = [run for run in every_run if "finetune" in run.data.tags]
    states = [run for run in every_run if run.data.tags.get("kind") == "experiment"]
    runs = [run for run in every_run if run not in sweeps and run not in tuned and run not in states]
    cells = sorted((run.data.tags["dim"], run.data.tags["index"], run.data.tags["protocol"]) for run in runs
                   if run.data.tags["rerank"] == "none")
    assert cells == sorted((dim, index, protocol) for dim in ("8", "full") for index in ("annoy", "brute")
                           for protocol in ("book", "heldout"))
    reranked = sorted((run.data.tags["dim"], run.data.tags["rerank"], run.data.tags["protocol"]) for run in runs
                      if run.data.tags["rerank"] != "none")
    assert reranked == sorted((dim, rerank, protocol) for dim in ("8", "full") for rerank in ("aqe", "k_reciprocal")
                              for protocol in ("book", "heldout"))
    head = _run(["git", "rev-parse", "HEAD"], reproduced).stdout.strip()
    for run in runs:
        assert run.data.tags["backbone"] == "test_efficientnet"
        assert run.data.tags["git_commit"].startswith(head)
        assert "precision_at_4" in run.data.metrics and "latency_p50_us" in run.data.metrics
        assert run.data.params["index.family"] == run.data.tags["algorithm"]
    # The track stage: one run for the pipeline's state, with the headline metrics, every param, config and figures.
    assert len(states) == 1
    state = states[0]
    assert state.data.tags["dvc_experiment"] == "workspace" and state.data.tags["git_commit"].startswith(head)
    assert {"heldout/map_at_r", "book/precision_at_4", "latency_p50_us"} <= set(state.data.metrics)
    assert state.data.params["backbone.name"] == "test_efficientnet" and state.data.params["grid.dims"] == "['full', 8]"
    logged = {item.path for item in client.list_artifacts(state.info.run_id)}
    assert {"params.yaml", "summary.json", "results.md", "good.png", "tsne.png", "curves.png"} <= logged


def test_finetune_trains_compares_reports_and_tracks(reproduced: Path) -> None:
    """The fine-tune stages ran after the grid: a model, its re-embedded collection and index, the comparison on
    the same queries (checked against the grid's own exact-search cell), curves, and MLflow runs with a model."""
    from mlflow.tracking import MlflowClient

    folder = reproduced / "artifacts/finetuned/test_efficientnet/heldout"
    for part in ("model/model.safetensors", "features/embeddings.npy", "index/index.json"):
        assert (folder / part).exists()
    report = json.loads((reproduced / "reports/finetune/test_efficientnet/trainings/heldout.json").read_text())
    assert set(report["protocols"]) == {"heldout", "book"} and report["protocols"]["book"]["leaky"]
    assert report["embedding_dim"] == 8 and report["train_images"] == 9 and report["val_images"] == 6
    grid = json.loads((reproduced / "reports/metrics/test_efficientnet/full-brute.json").read_text())
    heldout = report["protocols"]["heldout"]
    assert heldout["pretrained"]["map_at_r"] == pytest.approx(grid["protocols"]["heldout"]["map_at_r"])
    assert heldout["finetuned"]["queries"] == heldout["pretrained"]["queries"] == 3
    results = (reproduced / "reports/finetune/test_efficientnet/results.md").read_text()
    assert "LEAKY" in results and (reproduced / "reports/finetune/test_efficientnet/curves.png").stat().st_size > 0

    client = MlflowClient(tracking_uri=f"sqlite:///{reproduced / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ris")
    runs = [run for run in client.search_runs([experiment.experiment_id]) if "finetune" in run.data.tags]
    (training,) = [run for run in runs if run.data.tags.get("kind") == "finetune"]
    assert len(client.get_metric_history(training.info.run_id, "val/map_at_r")) == report["members"][0]["epochs_run"]
    assert "heldout/finetuned/map_at_r" in training.data.metrics and training.data.params["finetune.depth"] == "blocks"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{reproduced / 'mlflow.db'}")
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{training.info.run_id}'")
    model = mlflow.pytorch.load_model(logged.model_uri)  # the fine-tuned model itself, loadable from MLflow
    assert model(torch.zeros(2, 3, 160, 160)).shape == (2, 8)
    assert sorted(run.data.tags["protocol"] for run in runs if run is not training) == ["book", "heldout"]


def test_second_repro_is_a_no_op(reproduced: Path) -> None:
    status = _run(["dvc", "status"], reproduced).stdout
    assert "up to date" in status.lower()


def test_dvc_exp_run_recomposes_params_with_hydra_and_reuses_cached_stages(reproduced: Path) -> None:
    source_dir = yaml.safe_load((reproduced / "params.yaml").read_text())["data"]["source_dir"]
    overrides = [f"data.source_dir={source_dir}", *TINY_OVERRIDES, "grid.dims=[full,4]"]
    log = _run(["dvc", "exp", "run", *[arg for override in overrides for arg in ("-S", override)]], reproduced).stdout
    assert yaml.safe_load((reproduced / "params.yaml").read_text())["grid"]["dims"] == ["full", 4]
    assert "Running stage 'extract@" not in log and "Running stage 'reduce@test_efficientnet-4'" in log
    assert (reproduced / "reports/metrics/test_efficientnet/4-annoy.json").exists()
    assert "| 4 " in (reproduced / "reports/grid.md").read_text()

    # An experiment whose every cell DVC restores from its cache still appears in MLflow, under its name.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{reproduced / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("ris").experiment_id
    before = len(client.search_runs([experiment_id]))
    overrides[-1] = "grid.dims=[full,8]"  # the first repro's grid: every cell is in DVC's run cache
    log = _run(["dvc", "exp", "run", "-n", "cached-grid", *[arg for override in overrides for arg in ("-S", override)]],
               reproduced).stdout
    assert "Running stage 'evaluate@" not in log and "Running stage 'track'" in log
    newest_first = client.search_runs([experiment_id])
    new = newest_first[: len(newest_first) - before]
    assert [run.data.tags["dvc_experiment"] for run in new] == ["cached-grid"]
    assert new[0].data.tags["kind"] == "experiment" and "heldout/map_at_r" in new[0].data.metrics


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda path: path.name)
def test_every_notebook_runs_on_the_pipelines_outputs(reproduced: Path, notebook: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    document = nbformat.read(notebook, as_version=4)
    # Run where a user runs it, in the checkout's notebooks/ (the copy's, where `dvc repro` wrote its reports).
    (reproduced / "notebooks").mkdir(exist_ok=True)
    NotebookClient(document, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(reproduced / "notebooks")}}).execute()  # raises on an error
    outputs = [output for cell in document.cells if cell.cell_type == "code" for output in cell.outputs]
    assert outputs and not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "the notebook drew no figure"


def test_an_image_added_while_serving_is_kept_by_the_next_repro_which_embeds_only_it(reproduced: Path) -> None:
    """Last in this module: it grows the collection. An addition (as `POST /images` writes it) changes the download
    stage's input, so `dvc repro` catalogues it and extraction embeds that one image, reusing the others."""
    import numpy as np
    from PIL import Image

    from ris.data.additions import write_addition

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, "JPEG")
    addition, _ = write_addition(reproduced / "data/additions", "class_00", buffer.getvalue())
    assert "download" in _run(["dvc", "status"], reproduced).stdout
    log = _run(["dvc", "repro"], reproduced).stdout
    assert "Running stage 'download'" in log
    extract = json.loads((reproduced / "reports/extract/test_efficientnet.json").read_text())
    assert extract["embedded"] == 1 and extract["images"] == extract["reused"] + 1
    table = pd.read_parquet(reproduced / "data/caltech101/images.parquet")
    assert f"class_00/added/{addition.relative.name}" in table["path"].tolist()
