"""Fault injection: a collection holding every kind of awkward file, made in the test, through `ris stage download`.

Broken files are skipped with a reason in ``reports/data.json``; odd but valid images are kept and decoded as people
see them; files beyond the memory bounds are refused from their header, before any pixel is decoded; identical
files are reported.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PIPELINE, make_image_tree
from PIL import Image

from ris.cli import compose_params, main
from ris.images import MAX_ASPECT_RATIO, MAX_PIXELS, open_image

pytestmark = pytest.mark.faults


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _strip_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of any size, small on disk (a constant image compresses to almost nothing)."""
    return _png(Image.new("1", (width, height)))


def _header_only(data: bytes) -> bytes:
    """A PNG cut where its pixel data starts: the size is in the header, no pixel can be decoded."""
    return data[: data.index(b"IDAT") + 4]


def _exif_rotated_jpeg() -> bytes:
    """A 60 x 40 (landscape) picture stored as 40 x 60 with EXIF orientation 6 (rotate 90 degrees to view)."""
    stored = Image.new("RGB", (40, 60), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def _sixteen_bit_gray_png() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (48, 1))
    return _png(Image.fromarray(ramp))  # mode I;16


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 48), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _transparent_png() -> bytes:
    return _png(Image.new("RGBA", (48, 48), (255, 0, 0, 0)))


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """A two-class collection of good JPEGs plus one file of every awkward kind."""
    root = make_image_tree(tmp_path / "source", classes=2, per_class=4)
    good = root / "class_00" / "image_0000.jpg"
    jpeg = good.read_bytes()
    odd = root / "class_01"
    files = {
        # refused, each with its reason
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n",
        "strip.png": _strip_png(20_000, 2),  # 208 bytes that used to cost 3.3 GB in extraction
        "long_strip.png": _header_only(_strip_png(100_000, 2)),  # refused from the header: no pixels needed
        "huge.png": _header_only(_strip_png(8_000, 7_000)),  # 56 M pixels: over MAX_PIXELS
        "notes.txt": b"a stray file\n",
        # kept, decoded as people see them
        "rotated.jpg": _exif_rotated_jpeg(),
        "deep.png": _sixteen_bit_gray_png(),
        "animated.gif": _animated_gif(),
        "transparent.png": _transparent_png(),
        "wide_but_fine.png": _png(Image.new("RGB", (400, 40), "green")),  # exactly 10:1
    }
    for name, data in files.items():
        (odd / name).write_bytes(data)
    shutil.copyfile(good, root / "class_01" / "copy_of_class_00.jpg")  # an exact duplicate, in another class
    return root


def test_every_bad_file_is_listed_with_its_reason_and_the_rest_is_kept(corpus: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    params = compose_params([f"data.source_dir={corpus}", *TINY_PIPELINE], out=tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    main(["stage", "download", "--params", str(params)])

    report = json.loads((tmp_path / "reports/data.json").read_text())
    reasons = {item["path"]: item["reason"] for item in report["skipped_files"]}
    assert set(reasons) == {f"class_01/{name}" for name in ("truncated.jpg", "empty.jpg", "text.jpg", "strip.png",
                                                             "long_strip.png", "huge.png", "notes.txt")}
    assert "truncated" in reasons["class_01/truncated.jpg"]
    assert "not an image" in reasons["class_01/empty.jpg"] and "not an image" in reasons["class_01/text.jpg"]
    assert reasons["class_01/strip.png"].startswith("aspect ratio 10,000:1 (20000 x 2 pixels) is beyond 10:1")
    assert reasons["class_01/long_strip.png"].startswith("aspect ratio 50,000:1")  # not "truncated": never decoded
    assert reasons["class_01/huge.png"] == f"too large: 8000 x 7000 = 56,000,000 pixels, limit {MAX_PIXELS:,}"
    assert reasons["class_01/notes.txt"] == "not an image file: suffix .txt"
    assert report["skipped"] == 7 and report["images"] == 8 + 6
    assert report["duplicate_groups"] == 1
    assert report["duplicate_files"] == [["class_00/image_0000.jpg", "class_01/copy_of_class_00.jpg"]]

    table = pd.read_parquet(tmp_path / "data/caltech101/images.parquet").set_index("path")
    assert tuple(table.loc["class_01/rotated.jpg", ["width", "height"]]) == (60, 40)  # upright, as viewers show it
    images = tmp_path / "data/caltech101/images/class_01"
    deep = np.asarray(open_image(images / "deep.png"))
    assert deep.min() == 0 and deep.max() == 255 and np.median(deep) < 160  # scaled, not clipped to white
    assert tuple(np.asarray(open_image(images / "animated.gif"))[0, 0]) == (255, 0, 0)  # the first frame
    assert tuple(np.asarray(open_image(images / "transparent.png"))[0, 0]) == (128, 128, 128)  # on mid-gray

    # Re-running on identical input rewrites a byte-identical report (no memory addresses, no absolute paths).
    before = (tmp_path / "reports/data.json").read_bytes()
    main(["stage", "download", "--params", str(params)])
    assert (tmp_path / "reports/data.json").read_bytes() == before and str(tmp_path) not in before.decode()


def test_the_bounds_hold_exactly_at_their_limits() -> None:
    """A 10:1 image and one of exactly MAX_PIXELS are kept; one pixel more is refused (checked from the header)."""
    ratio = int(MAX_ASPECT_RATIO)
    assert open_image(_strip_png(40 * ratio, 40)).size == (40 * ratio, 40)
    with pytest.raises(ValueError, match="aspect ratio"):
        open_image(_header_only(_strip_png(40 * ratio + 1, 40)))
    side = int(MAX_PIXELS**0.5)
    assert side * side <= MAX_PIXELS
    with pytest.raises(ValueError, match="too large"):
        open_image(_header_only(_strip_png(side + 1, side + 1)))
