"""`ris search` and the searcher, on a tiny pipeline built by the real stages (timm's test model, random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PIPELINE, build_tiny_pipeline
from PIL import Image

from ris.artifacts import ArtifactError
from ris.checks import read_params
from ris.cli import compose_params, main
from ris.search import command
from ris.search.searcher import Searcher


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder where download, split, extract, reduce and index have run on 3 classes x 6 images."""
    work = tmp_path_factory.mktemp("pipeline")
    build_tiny_pipeline(work, ["tracking.enabled=false"])
    return work


def _photo(folder: Path, name: str, make) -> Path:  # type: ignore[no-untyped-def]
    path = folder / name
    make().save(path)
    return path


def test_a_collection_image_finds_itself_first(pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact search over the full embedding: the query's own file is rank 1 at distance ~0, then others."""
    monkeypatch.chdir(pipeline)
    searcher = Searcher.from_pipeline(read_params("params.yaml"), "full", "brute")
    target = sorted((pipeline / "data/caltech101/images/class_01").glob("*.jpg"))[2]
    from ris.images import open_image

    result = searcher.search(open_image(target), k=5)
    assert result.hits[0].path.resolve() == target.resolve() and result.hits[0].distance < 1e-3
    assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]
    assert all(a.distance <= b.distance for a, b in zip(result.hits, result.hits[1:], strict=False))
    assert result.embed_ms > 0 and result.search_ms > 0


def test_an_exif_rotated_copy_finds_the_upright_original(pipeline: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo stored sideways with an EXIF orientation tag is searched as people see it (upright)."""
    monkeypatch.chdir(pipeline)
    original = sorted((pipeline / "data/caltech101/images/class_02").glob("*.jpg"))[0]
    upright = Image.open(original).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # EXIF orientation 6 turns it back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "sideways.png"
    sideways.save(rotated, exif=exif)
    searcher = Searcher.from_pipeline(read_params("params.yaml"), "full", "brute")
    from ris.images import open_image

    assert searcher.search(open_image(rotated), k=1).hits[0].path.resolve() == original.resolve()


def test_cli_searches_outside_photos_and_reports_bad_queries(pipeline: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Outside photos of any kind are searched; unreadable queries get one line each; the exit code is 1."""
    data = pytest.importorskip("skimage.data")
    monkeypatch.chdir(pipeline)
    queries = tmp_path / "queries"
    queries.mkdir()
    _photo(queries, "astronaut.jpg", lambda: Image.fromarray(data.astronaut()))
    _photo(queries, "coffee.png", lambda: Image.fromarray(data.coffee()).convert("RGBA"))  # alpha
    _photo(queries, "camera.png", lambda: Image.fromarray(data.camera()))  # grayscale
    (queries / "notes.jpg").write_text("not an image")
    truncated = queries / "cut.jpg"
    Image.fromarray(data.chelsea()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    grids = tmp_path / "grids"

    code = command.main([str(queries), str(tmp_path / "missing.jpg"), "-k", "4", "--grid-dir", str(grids)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.count("ris search:") == 3 and "missing.jpg: no such file" in err
    assert "notes.jpg: not an image" in err and "cut.jpg: truncated" in err
    assert "Traceback" not in err
    for name in ("astronaut", "coffee", "camera"):
        assert f"{name}." in out and (grids / f"{name}.png").is_file()
        with Image.open(grids / f"{name}.png") as grid:
            assert grid.width > grid.height > 0  # the query and 4 results side by side
    assert out.count("   1  class_") == 3 and "embed" in out and "search" in out


def test_cli_json_output(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    data = pytest.importorskip("skimage.data")
    monkeypatch.chdir(pipeline)
    query = _photo(tmp_path, "chelsea.jpg", lambda: Image.fromarray(data.chelsea()))
    assert main_code(["search", str(query), "--json", "--no-grid", "--dim", "full", "--index", "brute", "-k", "3"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1 and records[0]["query"] == str(query) and records[0]["grid"] is None
    assert records[0]["index"].endswith("full / brute")
    assert [hit["rank"] for hit in records[0]["results"]] == [1, 2, 3]
    assert {"decode", "embed", "search"} <= set(records[0]["timings_ms"])
    distances = [hit["distance"] for hit in records[0]["results"]]
    assert distances == sorted(distances)


def main_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return int(caught.value.code or 0)


def test_without_a_built_pipeline_it_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    compose_params([f"data.source_dir={tmp_path}", *TINY_PIPELINE], out=tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    query = _photo(tmp_path, "q.png", lambda: Image.new("RGB", (32, 32), "red"))
    assert command.main([str(query)]) == 2
    err = capsys.readouterr().err
    assert "make repro" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_cell_outside_the_grid_is_refused(pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pipeline)
    with pytest.raises(ArtifactError, match="not in the grid"):
        Searcher.from_pipeline(read_params("params.yaml"), "16", "annoy")


def test_features_of_other_weights_are_refused(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The searcher's model must be the one the collection was embedded with."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "test_efficientnet.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    monkeypatch.chdir(pipeline)
    cfg = read_params("params.yaml")
    cfg.backbone.pretrained, cfg.backbone.weights_file = True, str(weights)
    with pytest.raises(ArtifactError, match="embedded with"):
        Searcher.from_pipeline(cfg)


def test_search_vectors_maps_rows_to_collection_images(pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stored vector's nearest neighbour under exact search is its own row (the rows and index agree)."""
    monkeypatch.chdir(pipeline)
    searcher = Searcher.from_pipeline(read_params("params.yaml"), 8, "brute")
    from ris.reduce import ReducedStore

    vectors = np.asarray(ReducedStore.load(pipeline / "artifacts/reduced/test_efficientnet/8").vectors)
    rows = pd.read_parquet(pipeline / "artifacts/features/test_efficientnet/rows.parquet")
    hits = [found[0] for found in searcher.search_vectors(vectors, 1)]
    assert [hit.row for hit in hits] == list(range(len(vectors)))
    assert [hit.label for hit in hits] == rows["class"].tolist()
    assert [hit.path for hit in hits] == [Path("data/caltech101/images") / path for path in rows["path"]]


def test_a_query_is_embedded_exactly_as_the_collection_was(pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedding a collection image's file through the searcher (decode, preprocessing, model, normalisation,
    PCA) gives the vector the pipeline stored for it."""
    monkeypatch.chdir(pipeline)
    searcher = Searcher.from_pipeline(read_params("params.yaml"), 8, "annoy")
    from ris.images import open_image
    from ris.reduce import ReducedStore

    stored = ReducedStore.load(pipeline / "artifacts/reduced/test_efficientnet/8").vectors
    rows = pd.read_parquet(pipeline / "artifacts/features/test_efficientnet/rows.parquet")
    for row in (0, 7, len(rows) - 1):
        query = searcher.embed([open_image(pipeline / "data/caltech101/images" / rows["path"][row])])[0]
        np.testing.assert_allclose(query, stored[row], atol=1e-4)


def test_an_unwritable_grid_folder_is_one_line_and_the_results_still_print(
        pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(pipeline)
    query = _photo(tmp_path, "q.png", lambda: Image.new("RGB", (40, 30), "blue"))
    (tmp_path / "a-file").write_text("not a folder")
    assert command.main([str(query), "--grid-dir", str(tmp_path / "a-file" / "grids")]) == 1
    out, err = capsys.readouterr()
    assert "cannot write its result grid" in err and "Traceback" not in err and "   1  class_" in out
