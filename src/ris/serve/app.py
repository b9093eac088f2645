"""The HTTP service over one :class:`~ris.search.searcher.Searcher`: search by upload, the collection's images by id,
health and Prometheus metrics, and a web page. The model and the index load once, before the first request.

Model work runs in worker threads (never on the event loop), at most ``limits.workers`` at a time, each with one
torch thread: on a small CPU two single-threaded searches side by side beat one search using both cores, and the
loop stays free to take uploads while they run.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, which name this factory's
own limits (``limits.max_k``), so they must be evaluated where they are written.
"""


import io
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from PIL import Image, UnidentifiedImageError

from ris.images import ImageReadError, open_image
from ris.search.searcher import Hit, Searcher
from ris.serve.metrics import RequestMetrics

THUMBNAIL_PX = 256


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask: upload size, results, and how many searches run at once."""

    max_upload_bytes: int = 20 * 2**20
    max_k: int = 100
    workers: int = 2  # searches computed side by side (one per core is the measured best on a small CPU)


class SearchError(HTTPException):
    """A request the service refuses, with a one-line reason in ``detail``."""


def upload_status(error: ImageReadError) -> int:
    """The HTTP status of an upload the decoder refused: 415 when it is not an image format the decoder reads, 413
    when it decodes to too many pixels (a decompression bomb), 400 when it is damaged (truncated, corrupt)."""
    cause = error.__cause__
    if isinstance(cause, UnidentifiedImageError):
        return 415
    if isinstance(cause, (Image.DecompressionBombError, Image.DecompressionBombWarning)) or "too large" in str(error):
        return 413
    return 400


def hit_json(hit: Hit) -> dict[str, Any]:
    return {"rank": hit.rank, "id": hit.row, "class": hit.label, "distance": hit.distance,
            "image_url": f"/images/{hit.row}", "thumbnail_url": f"/images/{hit.row}/thumbnail"}


def create_app(searcher: Searcher, limits: ServeLimits | None = None) -> FastAPI:
    """The service's routes over ``searcher`` (already loaded)."""
    limits = limits or ServeLimits()
    app = FastAPI(title="ris: reverse image search", version="0.1.0",
                  description=f"Search {len(searcher.labels):,} images ({searcher.description}) by example.")
    metrics = RequestMetrics()
    limiter = anyio.CapacityLimiter(limits.workers)
    classes = frozenset(searcher.labels)
    images_dir = searcher.images_dir.resolve()  # the rows' paths are relative to it; the server may chdir later
    page = resources.files("ris.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe(getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - started)
        return response

    def run_search(data: bytes, filename: str, k: int, label: str | None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            image = open_image(data, name=filename)
        except ImageReadError as error:
            raise SearchError(upload_status(error), str(error)) from None
        decoded = time.perf_counter()
        vector = searcher.embed([image])
        embedded = time.perf_counter()
        hits = filtered_hits(vector, k, label)
        done = time.perf_counter()
        return {"cell": searcher.description, "k": k, "class": label, "results": [hit_json(hit) for hit in hits],
                "timings_ms": {"decode": 1e3 * (decoded - started), "embed": 1e3 * (embedded - decoded),
                               "search": 1e3 * (done - embedded), "total": 1e3 * (done - started)}}

    def filtered_hits(vector: Any, k: int, label: str | None) -> list[Hit]:
        """The ``k`` nearest, or the ``k`` nearest of class ``label``: searched deeper until enough are found."""
        if label is None:
            return searcher.search_vectors(vector, k)[0]
        depth = k
        while True:
            hits = [hit for hit in searcher.search_vectors(vector, depth)[0] if hit.label == label]
            if len(hits) >= k or depth >= len(searcher.labels):
                return [Hit(rank, hit.row, hit.path, hit.label, hit.distance)
                        for rank, hit in enumerate(hits[:k], start=1)]
            depth = min(4 * depth, len(searcher.labels))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> str:
        return page

    @app.post("/search", summary="The k collection images most like an uploaded image")
    async def search(image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, GIF, ...)")],
                     k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
                     label: Annotated[str | None, Form(alias="class",
                                                       description="only results of this class")] = None,
                     ) -> dict[str, Any]:
        data = await image.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise SearchError(413, f"upload larger than the limit of {limits.max_upload_bytes:,} bytes")
        if not data:
            raise SearchError(400, "empty upload: the 'image' field holds no bytes")
        if label is not None and label not in classes:
            raise SearchError(400, f"unknown class {label!r}: the collection has {len(classes)} classes "
                                   f"(for example {', '.join(sorted(classes)[:5])})")
        return await anyio.to_thread.run_sync(run_search, data, image.filename or "upload", k, label,
                                              limiter=limiter)

    def checked_row(image_id: int) -> int:
        if not 0 <= image_id < len(searcher.labels):
            raise SearchError(404, f"no image {image_id}: ids run from 0 to {len(searcher.labels) - 1}")
        return image_id

    @app.get("/images/{image_id}", summary="A collection image, by id (the ids /search returns)")
    def collection_image(image_id: int) -> FileResponse:
        row = checked_row(image_id)
        return FileResponse(images_dir / searcher.relative_paths[row])

    @lru_cache(maxsize=4096)
    def thumbnail_bytes(row: int) -> bytes:
        image = open_image(images_dir / searcher.relative_paths[row])
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    @app.get("/images/{image_id}/thumbnail", summary=f"A collection image, at most {THUMBNAIL_PX} px a side")
    def thumbnail(image_id: int) -> Response:
        try:
            data = thumbnail_bytes(checked_row(image_id))
        except ImageReadError as error:
            raise SearchError(500, f"collection image {image_id} cannot be read: {error}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz", summary="Whether the service is up, and what it serves")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "images": len(searcher.labels), "cell": searcher.description}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Request counts and latencies (Prometheus)")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.prometheus_text(), media_type="text/plain; version=0.0.4")

    return app
