"""Fault injection: several real ris processes on one fresh checkout at once, and the locks they rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_PIPELINE, make_image_tree

from ris.cli import compose_params

pytestmark = pytest.mark.faults

PROCESSES = 3


def _start_all(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every command at once, then wait for all of them."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    running = [subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for command in commands]
    results = []
    for process in running:
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def _assert_all_succeeded(results: list[subprocess.CompletedProcess]) -> None:
    for result in results:
        assert result.returncode == 0, f"{result.args} failed:\n{result.stderr[-3000:]}"


@pytest.fixture()
def fresh_checkout(tmp_path: Path) -> Path:
    """A working folder with a 160-image collection to point ris at, and nothing prepared yet."""
    make_image_tree(tmp_path / "source", classes=4, per_class=40, size=40)
    return tmp_path


DOWNLOAD_ON_SIGNAL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ris.stages import download
    go = Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():  # everything is imported: the processes start preparing within milliseconds
        time.sleep(0.01)
    download.main(["--params", sys.argv[1]])
""")


def test_three_downloads_at_once_lose_nothing(fresh_checkout: Path) -> None:
    """The race that lost 37 of 160 images: each prepare deleting the others' work folders and tables."""
    params = compose_params([f"data.source_dir={fresh_checkout / 'source'}", *TINY_PIPELINE],
                            out=fresh_checkout / "params.yaml")
    go = fresh_checkout / "go"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    running = [subprocess.Popen([sys.executable, "-c", DOWNLOAD_ON_SIGNAL, str(params), str(go)], cwd=fresh_checkout,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(PROCESSES)]
    for process in running:  # every process has imported everything and waits
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for process in running:
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    _assert_all_succeeded(results)
    collection = fresh_checkout / "data/caltech101"
    table = pd.read_parquet(collection / "images.parquet")
    assert len(table) == 160 and len(list((collection / "images").rglob("*.jpg"))) == 160
    assert not list(collection.glob(".prepare-*"))
    assert json.loads((fresh_checkout / "reports/data.json").read_text())["images"] == 160


def test_three_ris_runs_at_once_all_succeed_and_all_are_tracked(fresh_checkout: Path) -> None:
    """Three `ris run` on a fresh checkout: one prepares and extracts, the others wait and reuse; every run logs."""
    command = [sys.executable, "-m", "ris.cli", "run", f"data.source_dir={fresh_checkout / 'source'}",
               *TINY_PIPELINE, "grid.dims=[8]", "grid.indexes=[brute]"]
    results = _start_all([command] * PROCESSES, fresh_checkout)
    _assert_all_succeeded(results)

    table = pd.read_parquet(fresh_checkout / "data/caltech101/images.parquet")
    assert len(table) == 160
    stores = [store for store in (fresh_checkout / "artifacts/cache/features/test_efficientnet").iterdir()
              if not store.name.startswith(".")]
    assert len(stores) == 1  # extracted once
    logs = list((fresh_checkout / "outputs/run").iterdir())
    assert len(logs) == PROCESSES  # one Hydra log folder each, even when started in the same second

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{fresh_checkout / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ris").experiment_id])
    # One brute cell, two protocols, per process; and eval.rerank's two rerankers on it, two protocols each.
    assert len(runs) == PROCESSES * (2 + 2 * 2)
    assert {run.data.params["features.key"] for run in runs} == {stores[0].name}


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ris.locks import locked
    with locked(Path(sys.argv[1]), exclusive=True):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
        Path(sys.argv[3]).write_text("written under the lock")
""")


def test_a_reader_waits_for_the_writer(tmp_path: Path) -> None:
    """A shared lock is granted only after another process's exclusive hold ends (no timing is asserted)."""
    from ris.locks import locked

    marker = tmp_path / "marker"
    writer = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "output"), "1.0", str(marker)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
    with locked(tmp_path / "output", exclusive=False):
        assert marker.read_text() == "written under the lock"
    assert writer.wait(timeout=60) == 0


def test_a_killed_holder_releases_its_lock(tmp_path: Path) -> None:
    """kill -9 of a process holding a lock frees it: a crash never leaves the checkout locked."""
    from ris.locks import locked

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "output"), "600", str(tmp_path / "m")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=60)
    with locked(tmp_path / "output", exclusive=True):
        assert not (tmp_path / "m").exists()


def test_locks_are_reentrant_but_never_upgrade(tmp_path: Path) -> None:
    from ris.locks import locked

    with locked(tmp_path / "a", exclusive=True), locked(tmp_path / "a", exclusive=False):
        pass
    with locked(tmp_path / "a", exclusive=False), pytest.raises(RuntimeError, match="holds it shared"):
        with locked(tmp_path / "a", exclusive=True):
            pass
