"""`ris serve`: the HTTP API against a real uvicorn server on loopback, over a tiny pipeline built by the real stages
(timm's test model, random weights): search by upload, images by id only, bad input refused with a clear 4xx."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from conftest import build_tiny_pipeline, free_port
from fastapi import FastAPI
from PIL import Image

from ris.checks import read_params
from ris.search.searcher import Searcher
from ris.serve.app import Additions, ServeLimits, create_app

UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("serve")
    build_tiny_pipeline(work, ["tracking.enabled=false"])
    return work


@pytest.fixture(scope="module")
def server(pipeline: Path) -> Iterator[str]:
    """The service on a free loopback port, in a thread of this process, read-only; its base URL."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)  # as `ris serve` runs: from the checkout (the service then outlives the chdir)
        searcher = Searcher.from_pipeline(read_params("params.yaml"), "full", "brute")
        app = create_app(searcher, ServeLimits(max_upload_bytes=UPLOAD_LIMIT, max_k=20, workers=2),
                         read_only_reason="this test's server is read-only")
    with serving(app) as url:
        yield url


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port, in a thread of this process; yield its base URL."""
    port = free_port()
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as session:
        yield session


def _collection_image(pipeline: Path, label: str = "class_01", position: int = 2) -> Path:
    return sorted((pipeline / "data/caltech101/images" / label).glob("*.jpg"))[position]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def test_an_uploaded_collection_image_finds_itself_first_and_its_results_link_to_images(
        client: httpx.Client, pipeline: Path) -> None:
    target = _collection_image(pipeline)
    response = client.post("/search", files={"image": (target.name, target.read_bytes(), "image/jpeg")},
                           data={"k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    first = body["results"][0]
    assert first["class"] == "class_01" and first["distance"] < 1e-3 and len(body["results"]) == 5
    assert [hit["rank"] for hit in body["results"]] == [1, 2, 3, 4, 5]
    assert set(body["timings_ms"]) == {"decode", "embed", "search", "total"}
    assert all(value > 0 for value in body["timings_ms"].values())
    assert client.get(first["image_url"]).content == target.read_bytes()
    thumbnail = Image.open(io.BytesIO(client.get(first["thumbnail_url"]).content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256


def test_a_class_filter_returns_only_that_class_and_an_unknown_class_is_refused(client: httpx.Client,
                                                                                pipeline: Path) -> None:
    target = _collection_image(pipeline, "class_00", 0)
    files = {"image": (target.name, target.read_bytes(), "image/jpeg")}
    body = client.post("/search", files=files, data={"k": "4", "class": "class_02"}).json()
    assert [hit["class"] for hit in body["results"]] == ["class_02"] * 4
    assert [hit["rank"] for hit in body["results"]] == [1, 2, 3, 4]
    refused = client.post("/search", files=files, data={"class": "zebra"})
    assert refused.status_code == 400 and "unknown class 'zebra'" in refused.json()["detail"]


def _bomb_png() -> bytes:
    """A 1-bit PNG of 10,000 x 10,000 pixels: 12 kB on the wire, 100 M pixels decoded (over the 50 M limit)."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "make", "status", "says"), [
    ("notes.txt", lambda: b"this is not an image\n", 415, "not an image"),
    ("half.jpg", lambda: _jpeg(Image.new("RGB", (64, 64), "red"))[:300], 400, "truncated"),
    ("empty.jpg", lambda: b"", 400, "empty upload"),
    ("bomb.png", _bomb_png, 413, "too large"),
    ("big.bmp", lambda: b"BM" + bytes(UPLOAD_LIMIT + 10), 413, "larger than the limit"),
])
def test_bad_uploads_get_a_4xx_that_names_the_problem(client: httpx.Client, name: str, make, status: int,
                                                      says: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/search", files={"image": (name, make(), "application/octet-stream")})
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert client.get("/healthz").json()["status"] == "ok"  # still serving


def test_wrong_fields_and_bad_k_are_refused_naming_the_field(client: httpx.Client, pipeline: Path) -> None:
    data = _collection_image(pipeline).read_bytes()
    wrong = client.post("/search", files={"file": ("a.jpg", data, "image/jpeg")})
    assert wrong.status_code == 422 and "image" in str(wrong.json()["detail"])
    for k in ("0", "21", "ten"):
        refused = client.post("/search", files={"image": ("a.jpg", data, "image/jpeg")}, data={"k": k})
        assert refused.status_code == 422 and "'k'" in str(refused.json()["detail"]).replace('"', "'")


def test_images_are_served_by_id_only(client: httpx.Client) -> None:
    images = client.get("/healthz").json()["images"]
    assert images == 18
    for path in ("/images/18", "/images/-1", "/images/../../etc/passwd", "/images/%2e%2e%2fparams.yaml",
                 "/images/abc", "/images/0/../../params.yaml"):
        response = client.get(path)
        assert response.status_code in (404, 422), path
        assert b"data:" not in response.content and b"root:" not in response.content
    assert client.get("/images/17").status_code == 200


def test_metrics_docs_and_page(client: httpx.Client, pipeline: Path) -> None:
    target = _collection_image(pipeline)
    client.post("/search", files={"image": (target.name, target.read_bytes(), "image/jpeg")})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'ris_requests_total{route="/search",status="200"}' in metrics.text
    assert 'ris_request_seconds{route="/search",quantile="0.99"}' in metrics.text
    assert client.get("/docs").status_code == 200 and "/search" in client.get("/openapi.json").json()["paths"]
    page = client.get("/").text
    assert "<title>ris" in page and "http://" not in page and "https://" not in page  # no CDN: works offline


def test_the_page_in_a_real_browser_searches_an_outside_photo_and_a_clicked_result(server: str,
                                                                                    tmp_path: Path) -> None:
    """Chromium picks scikit-image's cat photo, the grid shows 12 results with class and distance, and clicking the
    fourth searches with it: that image comes back first."""
    from browser import chromium_path, search_in_browser

    try:
        import playwright  # noqa: F401
    except ImportError:
        playwright = None
    if chromium_path() is None or playwright is None:
        if os.environ.get("RIS_REQUIRE_BROWSER") == "1":
            pytest.fail("RIS_REQUIRE_BROWSER=1 but chromium or playwright is missing (.ci/run installs them)")
        pytest.skip("no browser: apt-get install chromium, pip install playwright")
    import skimage.data

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=92)
    shown = search_in_browser(server, photo, tmp_path / "page.png")
    assert len(shown["first"]["ids"]) == 12 and len(set(shown["first"]["ids"])) == 12
    assert all("class_0" in caption and "distance" in caption for caption in shown["first"]["captions"])
    assert shown["second"]["ids"][0] == shown["clicked_id"]
    assert "distance 0.000" in shown["second"]["captions"][0]
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_bench_serve_loads_a_real_server_process_and_reports_latency_memory_and_targets(
        pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ris.bench.serve import run_serve_benchmark

    monkeypatch.chdir(pipeline)
    result = run_serve_benchmark(Path("params.yaml"), clients=3, requests_per_client=4, warmup=2, k=5,
                                 port=free_port(), max_seconds=120, serve_args=["--processes", "2"])
    assert result["one_client"]["requests"] == 4 and result["concurrent"]["requests"] == 12
    assert result["one_client"]["errors"] == result["concurrent"]["errors"] == 0
    latency = result["concurrent"]["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert result["memory_mib"]["after_warmup"] > 0 and result["images"] == 18
    assert set(result["targets"]) == {"one_client_p50_ms", "concurrency_speedup", "no_errors"}
    assert result["targets"]["no_errors"]["holds"] and result["serve_args"] == ["--processes", "2"]


def _photo(seed: int, size: int = 80) -> bytes:
    """A JPEG no collection image equals: smooth random colour fields."""
    generator = np.random.default_rng(seed)
    small = generator.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return _jpeg(Image.fromarray(small).resize((size, size), Image.BICUBIC))


@pytest.fixture()
def growing(pipeline: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path, Path]]:
    """A service that takes additions into ``tmp_path/additions``, over PCA-8 + Annoy (approximate, so the added
    rows' exact search is merged with another family); a client, the additions folder and the pipeline."""
    folder = tmp_path / "additions"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        searcher = Searcher.from_pipeline(read_params("params.yaml"), 8, "annoy")
        app = create_app(searcher, ServeLimits(max_upload_bytes=UPLOAD_LIMIT, max_files=3),
                         Additions(folder, excluded_classes=("class_03",)))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as session:
        yield session, folder, pipeline


def test_an_added_image_is_searchable_at_once_served_by_its_new_id_and_written_to_the_additions_folder(
        growing: tuple[httpx.Client, Path, Path]) -> None:
    client, folder, _ = growing
    photo = _photo(1)
    response = client.post("/images", files=[("images", ("mine.jpg", photo, "image/jpeg"))], data={"class": "kites"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["added"] == 1 and body["collection"] == 19
    added = body["images"][0]
    assert added["id"] == 18 and added["class"] == "kites" and added["new"]
    digest = hashlib.sha256(photo).hexdigest()
    assert added["sha256"] == digest
    assert (folder / "kites" / f"{digest[:16]}.jpg").read_bytes() == photo  # the bytes as uploaded
    assert sorted(path.name for path in folder.rglob("*")) == [".order", f"{digest[:16]}.jpg", "kites"]  # no temp
    assert (folder / ".order").read_text() == f"kites/{digest[:16]}.jpg\t{digest}\n"  # what numbers the rows
    found = client.post("/search", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"k": "5"}).json()
    assert found["results"][0]["id"] == 18 and found["results"][0]["distance"] < 1e-3
    distances = [hit["distance"] for hit in found["results"]]
    assert distances == sorted(distances) and len({hit["id"] for hit in found["results"]}) == 5
    only = client.post("/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                       data={"k": "1", "class": "kites"}).json()
    assert [hit["id"] for hit in only["results"]] == [18]  # a class that only additions have can filter
    assert client.get("/images/18").content == photo
    assert Image.open(io.BytesIO(client.get("/images/18/thumbnail").content)).format == "JPEG"
    assert client.get("/healthz").json()["images"] == 19 and client.get("/images/19").status_code == 404


def test_adding_known_content_again_adds_nothing_and_returns_the_existing_rows(
        growing: tuple[httpx.Client, Path, Path]) -> None:
    client, folder, pipeline = growing
    collection_image = _collection_image(pipeline, "class_02", 1).read_bytes()
    photo = _photo(2)
    files = [("images", ("a.jpg", photo, "image/jpeg")), ("images", ("b.jpg", photo, "image/jpeg")),
             ("images", ("c.jpg", collection_image, "image/jpeg"))]
    first = client.post("/images", files=files, data={"class": "class_00"})
    assert first.status_code == 201, first.text
    rows = [(item["id"], item["new"]) for item in first.json()["images"]]
    assert rows[0] == (18, True) and rows[1] == (18, False)  # one copy, within the request
    assert not rows[2][1] and rows[2][0] < 18  # already in the collection: its own row
    again = client.post("/images", files=files[:1], data={"class": "class_00"})
    assert again.status_code == 200 and again.json()["images"][0]["id"] == 18 and again.json()["added"] == 0
    assert len(list(folder.rglob("*.jpg"))) == 1 and client.get("/healthz").json()["images"] == 19


@pytest.mark.parametrize(("files", "label", "status", "says"), [
    ([("x.jpg", _photo(3))], "../escape", 400, "not a plain folder name"),
    ([("x.jpg", _photo(3))], "class_03", 400, "excluded"),
    ([("notes.txt", b"not an image")], "kites", 415, "not an image"),
    ([("x.jpg", _photo(3)), ("half.jpg", _photo(4)[:200])], "kites", 400, "truncated"),
    ([("x.jpg", _photo(3)), ("empty.jpg", b"")], "kites", 400, "empty upload"),
    ([("x.jpg", _photo(3))] * 4, "kites", 413, "the limit is 3"),
    ([("big.bmp", b"BM" + bytes(UPLOAD_LIMIT + 10))], "kites", 413, "upload limit"),
])
def test_refused_additions_name_the_problem_and_write_nothing(growing: tuple[httpx.Client, Path, Path],
                                                              files: list[tuple[str, bytes]], label: str,
                                                              status: int, says: str) -> None:
    client, folder, _ = growing
    response = client.post("/images", files=[("images", (name, data, "image/jpeg")) for name, data in files],
                           data={"class": label})
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert not folder.exists() or not list(folder.rglob("*"))
    assert client.get("/healthz").json()["images"] == 18


def test_an_unsupported_format_and_missing_fields_are_refused(growing: tuple[httpx.Client, Path, Path]) -> None:
    client, _, _ = growing
    icon = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(icon, "ICO")  # decodes, but is not a format the collection keeps
    refused = client.post("/images", files=[("images", ("a.ico", icon.getvalue(), "image/x-icon"))],
                          data={"class": "kites"})
    assert refused.status_code == 415 and "format ICO cannot be added" in refused.json()["detail"]
    no_class = client.post("/images", files=[("images", ("a.jpg", _photo(5), "image/jpeg"))])
    assert no_class.status_code == 422 and "class" in str(no_class.json()["detail"])
    no_images = client.post("/images", data={"class": "kites"})
    assert no_images.status_code == 422 and "images" in str(no_images.json()["detail"])


def test_a_read_only_service_refuses_additions_saying_why(client: httpx.Client) -> None:
    response = client.post("/images", files=[("images", ("a.jpg", _photo(6), "image/jpeg"))],
                           data={"class": "kites"})
    assert response.status_code == 403 and "this test's server is read-only" in response.json()["detail"]


def test_a_restarted_service_searches_the_additions_not_yet_catalogued(pipeline: Path, tmp_path: Path) -> None:
    from ris.data.additions import write_addition

    folder = tmp_path / "additions"
    photo = _photo(7)
    write_addition(folder, "kites", photo)
    (folder / "README.md").write_text("not an addition")
    (folder / "kites" / "by-hand.jpg").write_bytes(_photo(9))  # copied in by hand: searched where it is
    (folder / "kites" / "broken.jpg").write_bytes(b"not a jpeg")  # logged and left alone
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        searcher = Searcher.from_pipeline(read_params("params.yaml"), "full", "brute")
        create_app(searcher, additions=Additions(folder))
    assert searcher.size == 20 and searcher.label(18) == searcher.label(19) == "kites"
    assert sorted(path.name for path in folder.rglob("*.jpg")) == sorted(
        ["broken.jpg", "by-hand.jpg", f"{hashlib.sha256(photo).hexdigest()[:16]}.jpg"])  # nothing written
    hit = searcher.search(Image.open(io.BytesIO(photo)).convert("RGB"), k=1).hits[0]
    assert hit.label == "kites" and hit.distance < 1e-3 and hit.path.parent == (folder / "kites").resolve()


def test_an_added_image_joins_the_collection_at_the_next_download_and_only_it_is_embedded(tmp_path: Path) -> None:
    """What `dvc repro` runs after additions: the download stage catalogues them, extraction embeds only them."""
    from ris.data.additions import write_addition
    from ris.stages import download, extract

    params = build_tiny_pipeline(tmp_path, ["tracking.enabled=false"])
    photo = _photo(8)
    addition, _ = write_addition(tmp_path / "data/additions", "class_01", photo)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        cfg = read_params(params)
        report = download.run(cfg)
        extracted = extract.run(cfg)
    assert report["images"] == 19 and "+ 1 added" in report["source"]
    table = pd.read_parquet(tmp_path / "data/caltech101/images.parquet")
    row = table[table["sha256"] == hashlib.sha256(photo).hexdigest()]
    assert row["path"].tolist() == [f"class_01/added/{addition.relative.name}"]
    assert row["class"].tolist() == ["class_01"]
    assert extracted["images"] == 19 and extracted["embedded"] == 1 and extracted["reused"] == 18


def test_services_sharing_an_additions_folder_see_each_others_additions_under_the_same_ids(
        pipeline: Path, tmp_path: Path) -> None:
    """What `ris serve --processes 2` runs: each process has its own searcher; the additions' order file numbers
    their rows, so an id means the same image whichever process answers."""
    folder = tmp_path / "additions"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        apps = [create_app(Searcher.from_pipeline(read_params("params.yaml"), "full", "brute"),
                           additions=Additions(folder)) for _ in range(2)]
    first, second = _photo(10), _photo(11)
    with serving(apps[0]) as one, serving(apps[1]) as other, httpx.Client(timeout=30) as client:
        added = client.post(f"{one}/images", files=[("images", ("a.jpg", first, "image/jpeg"))], data={"class": "x"})
        assert added.json()["images"][0]["id"] == 18
        added = client.post(f"{other}/images", files=[("images", ("b.jpg", second, "image/jpeg"))],
                            data={"class": "y"})
        assert added.json()["images"][0]["id"] == 19  # the other process's addition came first
        for url in (one, other):
            assert client.get(f"{url}/healthz").json()["images"] == 20
            assert client.get(f"{url}/images/18").content == first and client.get(f"{url}/images/19").content == second
            found = client.post(f"{url}/search", files={"image": ("q.jpg", second, "image/jpeg")},
                                data={"k": "1", "class": "y"}).json()
            assert [hit["id"] for hit in found["results"]] == [19]


def test_a_compiled_embedder_gives_the_eager_embeddings_and_never_compiles_again(pipeline: Path) -> None:
    """`ris serve` compiles the model at start (torch.compile, frozen weights); searches then run it one image at
    a time, the shape it was compiled for, and get what the eager model gives."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        searcher = Searcher.from_pipeline(read_params("params.yaml"), "full", "brute")
    images = [Image.open(_collection_image(pipeline, label, 0)).convert("RGB") for label in ("class_00", "class_02")]
    eager = searcher.embedder.embed(images)
    refused = searcher.embedder.compile()
    if refused is not None and "failed" in refused:
        pytest.skip(f"torch.compile cannot run here: {refused}")
    assert refused is None and searcher.embedder.one_at_a_time
    import torch._dynamo

    compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = searcher.embedder.embed(images)
    assert np.allclose(compiled, eager, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiles  # no second compile for a search
