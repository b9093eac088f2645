"""A sweep against a real `mlflow server` on loopback: every run, metric and artifact arrives, checked over REST."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, make_image_tree, tiny_run_overrides

from ris.cli import main

pytestmark = pytest.mark.e2e


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and proxied artifacts, as a team would run it; its URL."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_sweep_logs_every_run_metric_and_artifact_to_an_mlflow_server(mlflow_server: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_image_tree(tmp_path / "collection", classes=3, per_class=5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    main(["run", "-m", "grid.dims=4,8", "grid.indexes=brute", *tiny_run_overrides(images)])

    api = httpx.Client(base_url=f"{mlflow_server}/api/2.0/mlflow", timeout=30)
    experiment = api.get("/experiments/get-by-name", params={"experiment_name": "ris"}).json()["experiment"]
    runs = api.post("/runs/search", json={"experiment_ids": [experiment["experiment_id"]],
                                          "max_results": 1000}).json()["runs"]
    tags = [{tag["key"]: tag["value"] for tag in run["data"]["tags"]} for run in runs]
    cells = sorted((tag["dim"], tag["rerank"], tag["protocol"]) for tag in tags)
    # Two jobs x (the cell + two rerankers) x two protocols.
    assert cells == sorted((dim, rerank, protocol) for dim in ("4", "8") for rerank in ("none", "aqe", "k_reciprocal")
                           for protocol in ("book", "heldout"))
    assert {tag["source"] for tag in tags} == {"hydra"} and all(tag["git_commit"] for tag in tags)
    metric_names = {frozenset(metric["key"] for metric in run["data"]["metrics"]) for run, tag in zip(runs, tags)
                    if tag["rerank"] == "none"}
    assert len(metric_names) == 1 and {"map_at_r", "precision_at_4", "latency_p50_us"} <= next(iter(metric_names))
    dims = {param["value"] for run in runs for param in run["data"]["params"] if param["key"] == "reduce.dim"}
    assert dims == {"4", "8"}  # the param that differs between the jobs
    for run in runs:
        files = api.get("/artifacts/list", params={"run_id": run["info"]["run_id"]}).json().get("files", [])
        assert {"config.yaml", "overrides.yaml"} <= {item["path"] for item in files}, run["info"]["run_name"]
