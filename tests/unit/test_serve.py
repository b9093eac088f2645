"""`ris serve`: the HTTP API against a real uvicorn server on loopback, over a tiny pipeline built by the real stages
(timm's test model, random weights): search by upload, images by id only, bad input refused with a clear 4xx."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import build_tiny_pipeline, free_port
from PIL import Image

from ris.checks import read_params
from ris.search.searcher import Searcher
from ris.serve.app import ServeLimits, create_app

UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("serve")
    build_tiny_pipeline(work, ["tracking.enabled=false"])
    return work


@pytest.fixture(scope="module")
def server(pipeline: Path) -> Iterator[str]:
    """The service on a free loopback port, in a thread of this process; its base URL."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)  # as `ris serve` runs: from the checkout (the service then outlives the chdir)
        searcher = Searcher.from_pipeline(read_params("params.yaml"), "full", "brute")
        app = create_app(searcher, ServeLimits(max_upload_bytes=UPLOAD_LIMIT, max_k=20, workers=2))
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
                                 port=free_port(), max_seconds=120, serve_args=["--workers", "2"])
    assert result["one_client"]["requests"] == 4 and result["concurrent"]["requests"] == 12
    assert result["one_client"]["errors"] == result["concurrent"]["errors"] == 0
    latency = result["concurrent"]["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert result["memory_mib"]["after_warmup"] > 0 and result["images"] == 18
    assert set(result["targets"]) == {"one_client_p50_ms", "concurrency_speedup", "no_errors"}
    assert result["targets"]["no_errors"]["holds"] and result["serve_args"] == ["--workers", "2"]
