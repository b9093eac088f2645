"""`ris run`: a grid per Hydra job, sweeps with -m, one MLflow run per cell and protocol, features extracted once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import make_image_tree, tiny_run_overrides

import ris.run
from ris.cli import compose_params, main
from ris.embed.extract import run_extraction


def test_multirun_sweeps_one_cell_per_job_into_one_mlflow_run_per_protocol(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_image_tree(tmp_path / "collection", classes=3, per_class=5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extractions: list[str] = []

    def counting_extraction(plan, *args, **kwargs):  # type: ignore[no-untyped-def]
        extractions.append(plan.key)
        return run_extraction(plan, *args, **kwargs)

    monkeypatch.setattr(ris.run, "run_extraction", counting_extraction)
    main(["run", "-m", "grid.dims=4,8", "grid.indexes=annoy,brute", *tiny_run_overrides(images)])

    stores = [store for store in (tmp_path / "artifacts/cache/features/test_efficientnet").iterdir()
              if not store.name.startswith(".")]  # lock files (ris.locks) are hidden
    assert len(stores) == 1 and extractions == [stores[0].name]  # four jobs, one extraction

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    every_run = client.search_runs([client.get_experiment_by_name("ris").experiment_id])
    runs = [run for run in every_run if run.data.tags["rerank"] == "none"]
    cells = sorted((run.data.tags["dim"], run.data.tags["index"], run.data.tags["protocol"]) for run in runs)
    assert cells == sorted((dim, index, protocol) for dim in ("4", "8") for index in ("annoy", "brute")
                           for protocol in ("book", "heldout"))
    for run in runs:
        assert run.data.tags["source"] == "hydra" and run.data.metrics["vector_dim"] == int(run.data.tags["dim"])
        assert 0.0 <= run.data.metrics["precision_at_4"] <= 1.0 and 0.0 <= run.data.metrics["recall_at_5"] <= 1.0
        assert run.data.params["features.key"] == stores[0].name
        assert run.data.metrics["queries"] == (15 if run.data.tags["protocol"] == "book" else 3)
    brute_recalls = [run.data.metrics["ann_recall_at_10"] for run in runs if run.data.tags["algorithm"] == "brute"]
    assert brute_recalls == [1.0] * 4
    # eval.rerank measures its rerankers on brute cells: one more run per reranker and protocol, same metric names.
    reranked = sorted((run.data.tags["dim"], run.data.tags["index"], run.data.tags["rerank"], run.data.tags["protocol"])
                      for run in every_run if run.data.tags["rerank"] != "none")
    assert reranked == sorted((dim, "brute", rerank, protocol) for dim in ("4", "8")
                              for rerank in ("aqe", "k_reciprocal") for protocol in ("book", "heldout"))
    for run in every_run:
        if run.data.tags["rerank"] != "none":
            assert run.data.params["rerank.method"] == run.data.tags["rerank"]
            assert 0.0 <= run.data.metrics["map_at_r"] <= 1.0 and run.data.metrics["latency_p50_us"] > 0

    main(["run", "grid.dims=full", "grid.indexes=brute", *tiny_run_overrides(images)])  # reuses the store
    assert len(extractions) == 1
    assert len(client.search_runs([client.get_experiment_by_name("ris").experiment_id])) == 10 + 8 + 4


def test_bad_value_is_rejected_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["run", "indexes.annoy.metric=cosine", "hydra.run.dir=outputs"])
    assert "config key 'indexes.annoy.metric' is 'cosine'; allowed values: euclidean, angular" in str(caught.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "artifacts").exists()


def test_stage_rejects_unknown_key_in_params_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = compose_params([], out=tmp_path / "params.yaml")
    raw = yaml.safe_load(params.read_text())
    raw["reduce"]["dimm"] = 3
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="ris stage download: config key 'reduce.dimm' does not exist"):
        main(["stage", "download", "--params", str(params)])
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


def test_compose_writes_overrides_into_params(tmp_path: Path) -> None:
    out = compose_params(["backbone=tf_efficientnet_lite0", "grid.dims=[full,32]"], out=tmp_path / "params.yaml")
    raw = yaml.safe_load(out.read_text())
    assert raw["backbone"]["name"] == "tf_efficientnet_lite0" and raw["grid"]["dims"] == ["full", 32]


def test_a_stage_before_its_inputs_exist_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ris stage split` before download: what is missing and what to run, no traceback."""
    params = compose_params([f"data.source_dir={tmp_path}"], out=tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["stage", "split", "--params", str(params)])
    assert str(caught.value).startswith("ris stage split: data/caltech101/images.parquet not found: run `dvc repro`")


def test_run_reuses_stored_features_when_the_weights_are_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features cached for these images and this backbone setting need no weights file to be evaluated again."""
    import timm
    import torch
    from safetensors.torch import save_file

    images = make_image_tree(tmp_path / "collection", classes=3, per_class=5)
    torch.manual_seed(3)
    weights = tmp_path / "test_efficientnet.r160_in1k.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = [*tiny_run_overrides(images), "backbone.pretrained=true", f"backbone.weights_file={weights}",
                 "grid.dims=[4]", "grid.indexes=[brute]", "tracking.enabled=false"]
    main(["run", *overrides])
    weights.unlink()
    main(["run", *overrides])
    job_logs = "".join(log.read_text() for log in (tmp_path / "outputs").glob("*.log"))  # Hydra's job log
    assert "does not exist; using the stored features" in job_logs

    other_images = [override for override in overrides if not override.startswith("data.source_dir")]
    (tmp_path / "data").rename(tmp_path / "data-old")  # other images: nothing stored fits, so the weights are needed
    make_image_tree(tmp_path / "other", classes=3, per_class=4)
    with pytest.raises(SystemExit, match="does not exist"):
        main(["run", f"data.source_dir={tmp_path / 'other'}", *other_images])


def test_a_run_over_two_backbones_extracts_and_tracks_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_image_tree(tmp_path / "collection", classes=3, per_class=5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    second = ["+backbones.test_resnet.name=test_resnet", "+backbones.test_resnet.pretrained=false",
              "+backbones.test_resnet.num_workers=0", "grid.backbones=[test_efficientnet,test_resnet]"]
    main(["run", "grid.dims=4", "grid.indexes=brute", "eval.rerank.indexes=[]", *tiny_run_overrides(images), *second])
    for name in ("test_efficientnet", "test_resnet"):
        stores = (tmp_path / f"artifacts/cache/features/{name}").iterdir()
        assert any(not store.name.startswith(".") for store in stores)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ris").experiment_id])
    assert sorted((run.data.tags["backbone"], run.data.tags["protocol"]) for run in runs) == sorted(
        (name, protocol) for name in ("test_efficientnet", "test_resnet") for protocol in ("book", "heldout"))
    keys = {run.data.tags["backbone"]: run.data.params["features.key"] for run in runs}
    assert keys["test_efficientnet"] != keys["test_resnet"]  # each backbone's own features
