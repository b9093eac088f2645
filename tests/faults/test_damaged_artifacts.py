"""Fault injection: damaged artifacts stop the stage with one line naming the file and the fix, before any MLflow run.

Each test damages one real artifact of a tiny pipeline built by the real stages, then runs the stage that reads it
as a user would (`ris stage NAME`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import build_tiny_pipeline

from ris.cli import main

pytestmark = pytest.mark.faults

FEATURES = Path("artifacts/features/test_efficientnet")
REDUCED = Path("artifacts/reduced/test_efficientnet/8")
ANNOY = Path("artifacts/indexes/test_efficientnet/8/annoy")
TABLE = Path("data/caltech101/images.parquet")
SPLIT = Path("data/caltech101/split.parquet")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("built")
    build_tiny_pipeline(work, ["tracking.uri=sqlite:///mlflow.db"])
    return work


@pytest.fixture()
def work(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the built pipeline to damage, as the working directory."""
    copy = tmp_path / "work"
    shutil.copytree(built, copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return copy


def _truncate(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return damage


def _edit_json(key: str, value: object) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        description = json.loads(path.read_text())
        description[key] = value
        path.write_text(json.dumps(description))
    return damage


def _mlflow_runs(work: Path) -> int:
    if not (work / "mlflow.db").exists():
        return 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ris")
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


EVALUATE = ["stage", "evaluate", "--dim", "8", "--index", "annoy"]
CASES = {
    # what is damaged: (file, damage, the stage that reads it, what the message must say)
    "annoy index cut to 90 %": (ANNOY / "annoy.ann", _truncate(0.9), EVALUATE, str(ANNOY)),
    "annoy index emptied": (ANNOY / "annoy.ann", _truncate(0.0), EVALUATE, str(ANNOY)),
    "index description claims other features": (ANNOY / "index.json", _edit_json("built_from", {"features_key": "x"}),
                                                EVALUATE, "built from other inputs"),
    "index description of an older format": (ANNOY / "index.json", _edit_json("format_version", 0), EVALUATE,
                                             "version 0"),
    "embeddings cut to half": (FEATURES / "embeddings.npy", _truncate(0.5), EVALUATE, str(FEATURES)),
    "feature description claims more images": (FEATURES / "meta.json", _edit_json("images", 999), EVALUATE,
                                               "do not match the description"),
    "reduced vectors cut to half": (REDUCED / "vectors.npy", _truncate(0.5), EVALUATE, str(REDUCED)),
    "split table deleted": (SPLIT, Path.unlink, EVALUATE, f"{SPLIT} not found"),
    "split table cut to half": (SPLIT, _truncate(0.5), EVALUATE, str(SPLIT)),
    "image table cut to half": (TABLE, _truncate(0.5), ["stage", "split"], str(TABLE)),
    "reduced store deleted": (REDUCED / "reduced.json", Path.unlink, ["stage", "index", "--dim", "8", "--index",
                                                                        "brute"], str(REDUCED)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_artifact_is_one_line_naming_it_and_nothing_is_logged(case: str, work: Path,
                                                                          capfd: pytest.CaptureFixture[str]) -> None:
    relative, damage, command, expected = CASES[case]
    damage(work / relative)
    with pytest.raises(SystemExit) as caught:
        main(command)
    message = str(caught.value)
    assert message.startswith(f"ris stage {command[1]}: ") and "\n" not in message
    assert expected in message and ("dvc repro" in message or "ris stage" in message), message
    assert "Traceback" not in capfd.readouterr().err
    assert _mlflow_runs(work) == 0
    assert not (work / "reports/metrics/test_efficientnet/8-annoy.json").exists()


def test_the_undamaged_copy_evaluates_and_logs(work: Path) -> None:
    """The control: the same command on the same copy, undamaged, succeeds and logs its runs."""
    main(EVALUATE)
    assert _mlflow_runs(work) == 2  # book and heldout
    assert (work / "reports/metrics/test_efficientnet/8-annoy.json").is_file()
