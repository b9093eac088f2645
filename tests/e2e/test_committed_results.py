"""The committed reports/ and dvc.lock describe the committed code and params (no stale numbers in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_dvc_lock_matches_the_code_and_params_it_was_produced_with() -> None:
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([str(dvc), "status", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=True)
    stale = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                stale.append(f"{stage}: {change}")  # e.g. a stage missing from dvc.lock
                continue
            for kind, detail in change.items():
                # A fresh clone has no data or artifacts ("deleted"); what matters is code, params and commands.
                if kind == "changed deps":  # params files appear here too, with a dict of changed keys
                    stale += [f"{stage}: {path} {how}" for path, how in detail.items()
                              if isinstance(how, dict) or (path.startswith("src/") and how != "deleted")]
                elif kind in ("changed params", "changed command"):
                    stale.append(f"{stage}: {kind} {detail}")
    assert not stale, "reports/ and dvc.lock are stale; rerun `make repro` and commit them:\n" + "\n".join(stale)
