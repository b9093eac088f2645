"""The held-out split: stratified per class, seeded, independent of row order, stable as a class grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ris.artifacts import ArtifactError
from ris.config import SplitConfig
from ris.data.split import read_splits, split_collection, split_counts, splits_for_rows


def _table(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{label}/image_{item:04d}.jpg", label, f"{label}{item:060d}") for label, size in sizes.items()
            for item in range(size)]
    return pd.DataFrame(rows, columns=["path", "class", "sha256"])


@pytest.mark.parametrize("size, expected", [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (5, (3, 1, 1)),
                                            (31, (19, 6, 6)), (800, (480, 160, 160))])
def test_counts_per_class(size: int, expected: tuple[int, int, int]) -> None:
    """60/20/20 rounded; a class of two or more keeps one test and one train image."""
    assert split_counts(size, SplitConfig()) == expected


def test_split_is_stratified_and_covers_every_image() -> None:
    table = _table({"a": 31, "b": 800, "c": 3})
    split = split_collection(table, SplitConfig())
    assert list(split["path"]) == sorted(table["path"])
    counts = split.groupby(["class", "split"]).size().unstack(fill_value=0)
    assert counts.loc["a"].to_dict() == {"test": 6, "train": 19, "val": 6}
    assert counts.loc["b"].to_dict() == {"test": 160, "train": 480, "val": 160}
    assert counts.loc["c"].to_dict() == {"test": 1, "train": 1, "val": 1}


def test_split_is_seeded_and_independent_of_row_order() -> None:
    table = _table({"a": 50, "b": 40})
    first = split_collection(table, SplitConfig(seed=0))
    shuffled = split_collection(table.sample(frac=1.0, random_state=3), SplitConfig(seed=0))
    pd.testing.assert_frame_equal(first, shuffled)
    other_seed = split_collection(table, SplitConfig(seed=1))
    assert (first["split"] != other_seed["split"]).any()


def test_growing_a_class_moves_few_images() -> None:
    """Each image's place depends on a hash of itself: adding 10 % to a class moves few of the others."""
    before = split_collection(_table({"a": 200}), SplitConfig())
    after = split_collection(_table({"a": 220}), SplitConfig()).set_index("path").loc[before["path"]]
    moved = int((after["split"].to_numpy() != before["split"].to_numpy()).sum())
    assert moved <= 30


def test_splits_for_rows_and_read_splits(tmp_path: Path) -> None:
    table = _table({"a": 5, "b": 5})
    split = split_collection(table, SplitConfig())
    rows = table.iloc[::-1].reset_index(drop=True)
    assert list(splits_for_rows(split, rows)) == list(split.set_index("path").loc[rows["path"], "split"])
    extra = pd.concat([rows, _table({"z": 1})], ignore_index=True)
    with pytest.raises(KeyError, match="1 images are not in the split"):
        splits_for_rows(split, extra)
    with pytest.raises(ArtifactError, match="not found: run `dvc repro`"):
        read_splits(tmp_path / "split.parquet", rows)
    split.to_parquet(tmp_path / "split.parquet")
    with pytest.raises(ArtifactError, match="does not cover the features"):
        read_splits(tmp_path / "split.parquet", extra)
    assert np.array_equal(read_splits(tmp_path / "split.parquet", rows), splits_for_rows(split, rows))
