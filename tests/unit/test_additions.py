"""ris.data.additions: where `POST /images` keeps added images, and how the download stage takes them in."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from conftest import make_image_tree
from PIL import Image

from ris.config import DataConfig
from ris.data.additions import (AdditionError, check_class_name, copy_additions, list_additions, suffix_for,
                                write_addition)
from ris.data.prepare import prepare_collection


def _encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), "green").save(buffer, image_format)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["kites", "Faces_easy", "car_side", "a", "x1.2+b-c"])
def test_plain_folder_names_are_classes(name: str) -> None:
    assert check_class_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-dash", "a b", "é", "x" * 129, "a\\b"])
def test_names_that_are_not_plain_folder_names_are_refused(name: str) -> None:
    with pytest.raises(AdditionError, match="not a plain folder name"):
        check_class_name(name)


def test_an_excluded_class_is_refused() -> None:
    with pytest.raises(AdditionError, match="excluded"):
        check_class_name("BACKGROUND_Google", ["BACKGROUND_Google"])


@pytest.mark.parametrize(("image_format", "suffix"), [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"),
                                                      ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp")])
def test_the_suffix_follows_the_detected_format_not_the_uploaded_name(image_format: str, suffix: str) -> None:
    assert suffix_for(_encoded(image_format)) == suffix


def test_write_addition_names_by_content_keeps_the_bytes_and_writes_once(tmp_path: Path) -> None:
    data = _encoded("PNG")
    addition, new = write_addition(tmp_path, "kites", data)
    digest = hashlib.sha256(data).hexdigest()
    assert new and addition.relative == Path("kites") / f"{digest[:16]}.png" and addition.sha256 == digest
    assert (tmp_path / addition.relative).read_bytes() == data
    again, new_again = write_addition(tmp_path, "kites", data)
    assert again == addition and not new_again
    assert sorted(path.name for path in tmp_path.rglob("*")) == sorted(["kites", addition.relative.name])


def test_list_additions_keeps_class_images_only(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("about this folder")
    write_addition(tmp_path, "kites", _encoded("JPEG"))
    (tmp_path / "kites" / ".adding-123").write_bytes(b"half")  # a write in progress
    (tmp_path / "kites" / "notes.txt").write_text("no")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"")
    assert [path.parts[0] for path in list_additions(tmp_path)] == ["kites"]
    assert list_additions(tmp_path / "missing") == []


def test_copy_additions_refuses_to_overwrite(tmp_path: Path) -> None:
    folder, root = tmp_path / "additions", tmp_path / "collection"
    addition, _ = write_addition(folder, "kites", _encoded("JPEG"))
    assert copy_additions(folder, root) == 1
    assert (root / "kites" / "added" / addition.relative.name).is_file()
    with pytest.raises(AdditionError, match="already exists"):
        copy_additions(folder, root)


def test_prepare_catalogues_additions_with_the_collection_without_touching_the_source(tmp_path: Path) -> None:
    source = make_image_tree(tmp_path / "source", classes=2, per_class=2)
    addition, _ = write_addition(tmp_path / "additions", "kites", _encoded("JPEG"))
    cfg = DataConfig(name="tiny", root=str(tmp_path / "data"), source_dir=str(source),
                     additions=str(tmp_path / "additions"))
    prepared = prepare_collection(cfg)
    assert f"kites/added/{addition.relative.name}" in prepared.table["path"].tolist()
    assert len(prepared.table) == 5 and "+ 1 added" in prepared.source
    assert not (source / "kites").exists()


def test_a_collection_catalogued_in_place_refuses_additions_saying_what_to_do(tmp_path: Path) -> None:
    source = make_image_tree(tmp_path / "source", classes=2, per_class=2)
    cfg = DataConfig(name="tiny", root=str(tmp_path / "data"), source_dir=str(source), in_place=True,
                     additions=str(tmp_path / "additions"))
    assert len(prepare_collection(cfg).table) == 4  # no additions: fine
    write_addition(tmp_path / "additions", "kites", _encoded("JPEG"))
    with pytest.raises(AdditionError, match="catalogued in place"):
        prepare_collection(cfg)
