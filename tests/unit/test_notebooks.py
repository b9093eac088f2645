"""The notebooks are committed without outputs (the suite runs them: tests/e2e/test_dvc_repro.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook_for_each_part_of_the_books_work():
    assert [path.name for path in NOTEBOOKS] == ["01_features.ipynb", "02_search.ipynb", "03_pca.ipynb",
                                                 "04_finetuning.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebooks_are_stripped_of_outputs(notebook: Path):
    document = json.loads(notebook.read_text())
    for cell in document["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{notebook.name}: run nbstripout"
        assert not cell["metadata"], f"{notebook.name}: cell metadata left in (run nbstripout)"
    assert set(document["metadata"]) <= {"kernelspec", "language_info"}
