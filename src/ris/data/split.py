"""The held-out split by image: seeded, stratified by class, the same for every backbone.

Within each class, images are ordered by a seeded hash of their path and content, then cut into train / val /
test by the configured shares. The order depends on nothing but the image itself, so adding images to a class
moves few of the others between splits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ris.artifacts import ArtifactError
from ris.config import SplitConfig

SPLITS = ("train", "val", "test")
COLUMNS = ["path", "class", "sha256", "split"]


def _order_key(seed: int, path: str, sha256: str) -> str:
    return hashlib.sha256(f"{seed}\t{path}\t{sha256}".encode()).hexdigest()


def split_counts(size: int, shares: SplitConfig) -> tuple[int, int, int]:
    """How many of a class's ``size`` images go to train, val and test (rounded; train keeps the remainder).

    A class of two or more images keeps at least one image in test and one in train.
    """
    test = round(size * shares.test)
    val = round(size * shares.val)
    if size >= 2:
        test = min(max(test, 1), size - 1)
    val = max(0, min(val, size - test - 1))  # train keeps at least one image
    return size - val - test, val, test


def split_collection(table: pd.DataFrame, shares: SplitConfig) -> pd.DataFrame:
    """Assign every image of ``table`` (path, class, sha256) to train, val or test.

    Returns:
        The table's path, class and sha256 with a ``split`` column, sorted by path.
    """
    parts = []
    for _, members in table.groupby("class", sort=True):
        order = np.argsort([_order_key(shares.seed, path, digest)
                            for path, digest in zip(members["path"], members["sha256"], strict=True)], kind="stable")
        train, val, test = split_counts(len(members), shares)
        labels = np.array(["train"] * train + ["val"] * val + ["test"] * test)
        assigned = np.empty(len(members), dtype=object)
        assigned[order] = labels
        parts.append(members[["path", "class", "sha256"]].assign(split=assigned))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(parts).sort_values("path", kind="stable").reset_index(drop=True)


def splits_for_rows(split_table: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """The split of each of ``rows`` (a feature store's table), matched by path and content hash.

    Raises:
        KeyError: naming up to five rows the split does not cover (it was made for another collection).
    """
    by_image = split_table.set_index(["path", "sha256"])["split"]
    keys = pd.MultiIndex.from_arrays([rows["path"], rows["sha256"]])
    found = by_image.reindex(keys)
    if found.isna().any():
        missing = rows["path"][found.isna().to_numpy()].head(5).tolist()
        raise KeyError(f"{int(found.isna().sum())} images are not in the split, e.g. {missing}")
    return found.to_numpy(dtype=object)


def read_splits(split_table: Path, rows: pd.DataFrame) -> np.ndarray:
    """The split of each of ``rows``, from the ``split`` stage's table.

    Raises:
        ArtifactError: the table is missing, damaged, or was made for another collection.
    """
    remedy = "run `dvc repro` (the split stage writes it)"
    if not split_table.is_file():
        raise ArtifactError(f"{split_table} not found: {remedy}")
    try:
        table = pd.read_parquet(split_table)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{split_table} is unreadable ({' '.join(str(error).split())}): {remedy}") from error
    try:
        return splits_for_rows(table, rows)
    except KeyError as error:
        raise ArtifactError(f"{split_table} does not cover the features ({error.args[0]}): {remedy}") from error
