"""open_image on real files of the kinds people search with, and list_images on a folder tree."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ris.errors import UserFacingError
from ris.images import ALPHA_BACKGROUND, IMAGE_SUFFIXES, ImageReadError, list_images, open_image

RED, BLUE = (255, 0, 0), (0, 0, 255)
GRADIENT_16 = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
"""A 16-bit ramp over the full range: scaled by bit depth its mean is mid-gray; clipped it is nearly white."""


def _halves(width: int, height: int) -> Image.Image:
    """An RGB image whose left half is red and right half blue, so a rotation is visible."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return Image.fromarray(pixels)


def _jpeg_bytes(size: tuple[int, int] = (120, 80)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _mean(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.crop(box), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored rotated; shown after turning 90 degrees clockwise
    _halves(80, 40).save(path, quality=95, exif=exif)

    image = open_image(path)

    assert image.mode == "RGB"
    assert image.size == (40, 80)
    # Turning clockwise moves the stored left (red) half to the top and the right (blue) half to the bottom.
    np.testing.assert_allclose(_mean(image, (5, 5, 35, 35)), RED, atol=20)
    np.testing.assert_allclose(_mean(image, (5, 45, 35, 75)), BLUE, atol=20)


@pytest.mark.parametrize(
    ("file_name", "make", "opened_mode"),
    [
        ("gray16.png", lambda: Image.fromarray(GRADIENT_16), "I;16"),
        ("gray16be.tif", lambda: Image.frombytes("I;16B", (64, 64), GRADIENT_16.astype(">u2").tobytes()), "I;16B"),
        ("gray16.pgm", lambda: Image.fromarray(GRADIENT_16), "I"),
        ("float.tif", lambda: Image.fromarray(GRADIENT_16.astype(np.float32) / 65535), "F"),
    ],
)
def test_high_depth_grayscale_is_scaled_not_clipped(
    tmp_path: Path, file_name: str, make: Callable[[], Image.Image], opened_mode: str
) -> None:
    path = tmp_path / file_name
    make().save(path)
    with Image.open(path) as raw:
        assert raw.mode == opened_mode  # the mode this test means to cover is the one Pillow opens

    image = open_image(path)

    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert image.size == (64, 64)
    assert pixels.min() == 0
    assert pixels.max() == 255
    assert 110 < pixels.mean() < 145, "a full-range ramp must average mid-gray, not near-white"
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_wide_int32_values_are_stretched(tmp_path: Path) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(np.linspace(-1000, 1_000_000, 32 * 32).reshape(32, 32).astype(np.int32)).save(path)

    pixels = np.asarray(open_image(path))

    assert (pixels.min(), pixels.max()) == (0, 255)


def test_transparent_rgba_becomes_mid_gray(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0, 255)  # opaque red left half
    pixels[:, 10:] = (0, 0, 0, 0)  # fully transparent right half, stored as black
    Image.fromarray(pixels).save(path)

    image = open_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == RED
    assert image.getpixel((15, 15)) == ALPHA_BACKGROUND == (128, 128, 128)


def test_half_transparent_pixels_blend_with_gray(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    Image.new("LA", (4, 4), (255, 128)).save(path)

    red, green, blue = open_image(path).getpixel((0, 0))

    assert red == green == blue
    assert 185 <= red <= 195  # halfway between white and the 128 gray


def test_palette_transparency_becomes_mid_gray(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 0, 255, 0])  # index 0 (black) is the transparent one
    image.putpixel((5, 5), 1)
    image.save(path, transparency=0)

    opened = open_image(path)

    assert opened.mode == "RGB"
    assert opened.getpixel((0, 0)) == ALPHA_BACKGROUND
    assert opened.getpixel((5, 5)) == (0, 255, 0)


def test_grayscale_and_cmyk_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 6), 77).save(tmp_path / "gray.png")
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")

    gray = open_image(tmp_path / "gray.png")
    cmyk = open_image(tmp_path / "cmyk.tif")

    assert (gray.mode, gray.size, gray.getpixel((0, 0))) == ("RGB", (8, 6), (77, 77, 77))
    assert (cmyk.mode, cmyk.getpixel((0, 0))) == ("RGB", RED)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 10), colour) for colour in (RED, BLUE, (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3

    image = open_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == RED


def test_result_is_independent_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (6, 4), BLUE).save(path)

    image = open_image(path)
    path.unlink()

    assert image.getpixel((0, 0)) == BLUE  # decoded in memory: still usable after the file is gone


def test_truncated_jpeg_is_reported(tmp_path: Path) -> None:
    whole = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(ImageReadError, match=r"^.*cut\.jpg: truncated image") as caught:
        open_image(path)

    assert isinstance(caught.value, UserFacingError)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG")

    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image \(cannot identify image file\)$"):
        open_image(path)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"missing\.jpg: no such file$"):
        open_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="is a folder"):
        open_image(tmp_path)


def test_decompression_bomb_is_refused_without_touching_warning_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is more than twice that: PIL's own error
    filters_before = list(warnings.filters)

    with pytest.raises(ImageReadError, match=r"big\.png: too large: 10,000 pixels, limit 1,000 \(a decompression"):
        open_image(path)
    assert warnings.filters == filters_before

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # between 1x and 2x: PIL only warns, which we refuse
    with pytest.raises(ImageReadError, match=r"big\.png: too large: 10,000 pixels, limit 6,000"):
        open_image(path)
    assert warnings.filters == filters_before


def test_bytes_input_uses_name(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), RED).save(buffer, "PNG")

    image = open_image(buffer.getvalue(), name="upload.png")

    assert (image.mode, image.size, image.getpixel((3, 3))) == ("RGB", (7, 5), RED)
    with pytest.raises(ImageReadError, match=r"^upload\.png: not an image"):
        open_image(b"GIF? no", name="upload.png")
    whole = _jpeg_bytes()
    with pytest.raises(ImageReadError, match=r"^image: truncated image"):
        open_image(whole[: len(whole) // 2])


def test_skimage_astronaut_opens_as_rgb(tmp_path: Path) -> None:
    data = pytest.importorskip("skimage.data")
    path = tmp_path / "astronaut.png"
    pixels = data.astronaut()
    Image.fromarray(pixels).save(path)

    image = open_image(path)

    assert (image.mode, image.size) == ("RGB", (512, 512))
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_list_images_expands_folders_and_keeps_explicit_paths(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "b_sub" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    for relative in ["z.JPG", "a.png", "b_sub/c.webp", "b_sub/deeper/d.tiff", ".hidden.jpg", ".hidden_dir/e.jpg"]:
        (root / relative).write_bytes(b"not decoded by list_images")
    (root / "readme.txt").write_text("notes")
    explicit_text = tmp_path / "notes.txt"
    explicit_text.write_text("kept: the caller reports it")
    missing = tmp_path / "missing.jpg"

    found = list_images([explicit_text, root, missing, root / "a.png"])

    assert found == [
        explicit_text,
        root / "a.png",
        root / "b_sub" / "c.webp",
        root / "b_sub" / "deeper" / "d.tiff",
        root / "z.JPG",
        missing,
    ]


def test_image_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} == IMAGE_SUFFIXES
    assert isinstance(IMAGE_SUFFIXES, frozenset)
