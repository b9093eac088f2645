"""scan_images on a synthetic collection salted with the kinds of junk real collections hold."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from conftest import make_image_tree
from PIL import Image

from ris.data.catalog import COLUMNS, scan_images


def _salted_tree(root: Path) -> Path:
    make_image_tree(root, classes=3, per_class=2, size=20)
    Image.fromarray(np.full((30, 25), 128, dtype=np.uint8), mode="L").save(root / "class_00" / "gray.png")
    whole = (root / "class_01" / "image_0000.jpg").read_bytes()
    (root / "class_01" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "class_02" / "text.jpg").write_text("this is not a JPEG")
    (root / "class_02" / "tmp").write_bytes(whole)  # a real JPEG, but without an image suffix
    (root / "loose.jpg").write_bytes(whole)
    (root / "class_00" / ".hidden.jpg").write_bytes(whole)
    (root / ".cache").mkdir()
    (root / ".cache" / "thumb.jpg").write_bytes(whole)
    return root


def test_scan_table_and_skips(tmp_path: Path) -> None:
    root = _salted_tree(tmp_path / "images")
    table, skipped = scan_images(root, progress=False)

    assert list(table.columns) == COLUMNS
    expected_paths = sorted(
        [f"class_{label:02d}/image_{item:04d}.jpg" for label in range(3) for item in range(2)] + ["class_00/gray.png"]
    )
    assert table["path"].tolist() == expected_paths
    assert table["class"].tolist() == [path.split("/")[0] for path in expected_paths]
    for row in table.itertuples(index=False):
        assert row.sha256 == hashlib.sha256((root / row.path).read_bytes()).hexdigest()
        with Image.open(root / row.path) as image:
            assert (row.width, row.height) == image.size
    gray = table.set_index("path").loc["class_00/gray.png"]
    assert (gray["width"], gray["height"]) == (25, 30)
    # make_image_tree makes image i of each class (size + i) pixels tall.
    first = table.set_index("path").loc["class_02/image_0001.jpg"]
    assert (first["width"], first["height"]) == (20, 21)
    assert table["width"].dtype == np.int64 and table["height"].dtype == np.int64

    reasons = {item["path"]: item["reason"] for item in skipped}
    assert set(reasons) == {"class_01/truncated.jpg", "class_02/text.jpg", "class_02/tmp", "loose.jpg"}
    assert "truncated" in reasons["class_01/truncated.jpg"].lower()
    assert "not an image" in reasons["class_02/text.jpg"]
    assert not any("0x" in reason for reason in reasons.values())  # no memory address: same input, same report
    assert "not an image" in reasons["class_02/tmp"]
    assert "class folder" in reasons["loose.jpg"]


def test_scan_is_deterministic_and_handles_nesting(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "images", classes=2, per_class=2, size=16)
    nested = root / "class_01" / "deeper"
    nested.mkdir()
    (nested / "x.jpg").write_bytes((root / "class_01" / "image_0000.jpg").read_bytes())
    first, _ = scan_images(root, progress=False)
    second, _ = scan_images(root, progress=False)
    assert first.equals(second)
    assert first.set_index("path").loc["class_01/deeper/x.jpg", "class"] == "class_01"


def test_scan_empty_folder(tmp_path: Path) -> None:
    table, skipped = scan_images(tmp_path, progress=False)
    assert list(table.columns) == COLUMNS and table.empty and skipped == []
