"""Fault injection: stages killed with SIGKILL midway leave no partial output, and the next run completes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_PIPELINE, make_image_tree

from ris.checks import read_params
from ris.cli import compose_params
from ris.embed.store import load_features
from ris.stages import download, split

pytestmark = pytest.mark.faults


def _kill_when(command: list[str], cwd: Path, line_contains: str) -> None:
    """Run ``command`` and SIGKILL it as soon as its log shows ``line_contains``."""
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line_contains in line:
            process.kill()
            break
    process.wait(timeout=120)
    assert process.returncode == -9, f"finished before it could be killed:\n{''.join(seen[-20:])}"


def _stage(name: str, params: Path) -> list[str]:
    return [sys.executable, "-m", "ris.cli", "stage", name, "--params", str(params)]


def _running_with(text: str) -> list[int]:
    """Process ids whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# With two ranks: killed once rank 0 has embedded its first batch (its progress line; logged after every batch here).
@pytest.mark.parametrize("devices, when", [(1, "embedding 160 images"),
                                           (2, "extract test_efficientnet: 2 / 160 images")])
def test_extract_killed_while_embedding_leaves_no_store(devices: int, when: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_tree(tmp_path / "source", classes=4, per_class=40, size=96)
    params = compose_params([f"data.source_dir={tmp_path / 'source'}", *TINY_PIPELINE, "backbone.batch_size=1",
                             f"backbone.devices={devices}"], out=tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RIS_PROGRESS_SECONDS", "0")
    cfg = read_params(params)
    download.run(cfg)
    split.run(cfg)
    features = tmp_path / "artifacts/features/test_efficientnet"

    _kill_when(_stage("extract", params), tmp_path, when)
    # The ranks die with the process that started them (at once, not when their share is done).
    deadline = time.monotonic() + 1.0
    while _running_with(str(params)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_with(str(params)) == []
    assert not features.exists()
    assert not list(features.parent.glob("*.partial"))

    subprocess.run(_stage("extract", params), cwd=tmp_path, check=True, capture_output=True)
    assert len(load_features(features).rows) == 160


def test_download_killed_while_scanning_leaves_no_table(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "source", classes=4, per_class=250, size=96)
    params = compose_params([f"data.source_dir={tmp_path / 'source'}", *TINY_PIPELINE], out=tmp_path / "params.yaml")
    collection = tmp_path / "data/caltech101"

    _kill_when(_stage("download", params), tmp_path, "read collection from")  # copied; now decoding every image
    assert not (collection / "images.parquet").exists() and not (collection / "images").exists()
    assert list(collection.glob(".prepare-*"))  # the killed run's work folder, removed by the next run

    subprocess.run(_stage("download", params), cwd=tmp_path, check=True, capture_output=True)
    assert len(pd.read_parquet(collection / "images.parquet")) == 1000
    assert not list(collection.glob(".prepare-*"))


def test_a_staging_folder_of_a_killed_process_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A stage killed while writing its output leaves a hidden staging folder; the next write of it removes that."""
    from ris.paths import atomic_folder

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    abandoned = tmp_path / f".out.{dead_pid}.x1.partial"
    live = tmp_path / f".out.{os.getppid()}.x2.partial"  # this test's parent process is alive
    abandoned.mkdir()
    live.mkdir()
    with atomic_folder(tmp_path / "out") as staging:
        (staging / "data").write_text("complete")
    assert (tmp_path / "out/data").read_text() == "complete"
    assert not abandoned.exists() and live.exists()
