"""The HTTP service over one :class:`~ris.search.searcher.Searcher`: search by upload, the collection's images by id,
images added while it runs, health and Prometheus metrics, and a web page. The model and the index load once,
before the first request.

An added image (`POST /images`) is written to the additions folder (where the next `dvc repro` catalogues it) and
then searched beside the built index at once; nothing else is re-embedded and nothing restarts.

Model work runs in worker threads (never on the event loop), at most ``limits.workers`` at a time, each with one
torch thread: on a small CPU two single-threaded searches side by side beat one search using both cores, and the
loop stays free to take uploads while they run.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, which name this factory's
own limits (``limits.max_k``), so they must be evaluated where they are written.
"""


import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from PIL import Image, UnidentifiedImageError

from ris.data.additions import (Addition, AdditionError, append_order, check_class_name, list_additions,
                                order_version, read_order, suffix_for, write_addition)
from ris.images import ImageReadError, open_image
from ris.locks import locked
from ris.search.searcher import Hit, Searcher
from ris.serve.metrics import RequestMetrics

THUMBNAIL_PX = 256
log = logging.getLogger("ris.serve")


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask: upload size, results, and how many searches run at once."""

    max_upload_bytes: int = 20 * 2**20
    max_k: int = 100
    max_files: int = 32  # images one `POST /images` may add
    workers: int = 2  # searches computed side by side (one per core is the measured best on a small CPU)


@dataclass
class Additions:
    """Where `POST /images` writes the images it adds (``data.additions``), the classes it refuses, and how far this
    process has read the additions' order file (which every serving process appends to and numbers its rows by)."""

    folder: Path
    excluded_classes: tuple[str, ...] = ()
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    consumed: int = 0  # order entries this process has read
    version: int = -1  # the order file's version when it last read it (-1: never)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the additions for changes: this process's threads (a threading lock) and other processes (the
        folder's file lock; ris.locks counts holds per process, so the threading lock must come first)."""
        with self.lock, locked(self.folder, exclusive=True):
            yield


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


def add_images(searcher: Searcher, additions: Additions, label: str, uploads: list[tuple[str, bytes]]
               ) -> list[dict[str, Any]]:
    """Add uploaded images (name and bytes) to class ``label``: written to the additions folder, then searchable.

    An image whose content the collection already holds is not added again: its existing row is returned.

    Raises:
        SearchError: an upload is not an image, is damaged or of a format the collection does not keep (each
            refused before anything is written), or the class name is not allowed.
    """
    try:
        check_class_name(label, additions.excluded_classes)
    except AdditionError as error:
        raise SearchError(400, str(error)) from None
    images = []
    for name, data in uploads:
        try:
            images.append(open_image(data, name=name))
            suffix_for(data)
        except ImageReadError as error:
            raise SearchError(upload_status(error), str(error)) from None
        except AdditionError as error:
            raise SearchError(415, f"{name}: {error}") from None
    vectors = searcher.embed(images)  # the slow part, outside the locks: searches and other additions go on
    digests = [hashlib.sha256(data).hexdigest() for _, data in uploads]
    with additions.writing():  # the check for an existing copy and the addition are one step, in every process
        catch_up(searcher, additions)  # first the additions other processes made: ids follow the order file
        rows = [searcher.find(digest) for digest in digests]
        # New content, first copy in this request: written, recorded in the order file, then added to the searcher.
        fresh = [position for position, digest in enumerate(digests)
                 if rows[position] is None and digests.index(digest) == position]
        written = [write_addition(additions.folder, label, uploads[position][1])[0] for position in fresh]
        if written:
            append_order(additions.folder, written)
            paths = [(additions.folder / item.relative).resolve() for item in written]
            ids = searcher.add_vectors(vectors[fresh], paths, [label] * len(fresh),
                                       [digests[position] for position in fresh])
            for position, row in zip(fresh, ids, strict=True):
                rows[position] = row
            additions.consumed += len(written)
            additions.version = order_version(additions.folder)
    rows = [rows[digests.index(digest)] if row is None else row for row, digest in zip(rows, digests, strict=True)]
    return [{"name": name, "id": row, "class": searcher.label(row), "new": position in fresh, "sha256": digest,
             "image_url": f"/images/{row}", "thumbnail_url": f"/images/{row}/thumbnail"}
            for position, ((name, _), row, digest) in enumerate(zip(uploads, rows, digests, strict=True))]


def catch_up(searcher: Searcher, additions: Additions) -> int:
    """Make the additions recorded since this process last looked searchable, in their recorded order (so each gets
    the same id in every process); return how many. Call it holding ``additions.writing()``.

    An entry the searcher already holds (catalogued by `dvc repro` since, or the same content twice) adds nothing;
    one that does not decode is logged and skipped, the same way in every process.
    """
    entries = read_order(additions.folder)
    images, paths, labels, digests = [], [], [], []
    for entry in entries[additions.consumed:]:
        if searcher.find(entry.sha256) is not None or entry.sha256 in digests:
            continue
        path = (additions.folder / entry.relative).resolve()
        try:
            images.append(open_image(path))
        except ImageReadError as error:
            log.warning("not searching %s: %s", path, error)
            continue
        paths.append(path)
        labels.append(entry.label)
        digests.append(entry.sha256)
    if images:
        searcher.add_vectors(searcher.embed(images), paths, labels, digests)
    additions.consumed, additions.version = len(entries), order_version(additions.folder)
    return len(images)


def refresh(searcher: Searcher, additions: Additions | None) -> None:
    """Catch up when another process has added images since this one last looked (one ``stat`` otherwise)."""
    if additions is not None and order_version(additions.folder) != additions.version:
        with additions.writing():
            catch_up(searcher, additions)


def add_pending(searcher: Searcher, additions: Additions) -> int:
    """At start: make searchable every addition the collection does not hold yet, where it is: those recorded in
    the order file (added before a restart, not yet catalogued by `dvc repro`), and image files copied into the
    folder by hand, which are recorded first. Returns how many."""
    with additions.writing():
        recorded = {entry.relative for entry in read_order(additions.folder)}
        unrecorded = []
        for relative in list_additions(additions.folder):
            if relative in recorded:
                continue
            digest = hashlib.sha256((additions.folder / relative).read_bytes()).hexdigest()
            if searcher.find(digest) is None:
                unrecorded.append(Addition(relative.parts[0], relative, digest))
        if unrecorded:
            append_order(additions.folder, unrecorded)
        return catch_up(searcher, additions)


def create_app(searcher: Searcher, limits: ServeLimits | None = None, additions: Additions | None = None,
               read_only_reason: str = "this service was started read-only") -> FastAPI:
    """The service's routes over ``searcher`` (already loaded).

    Args:
        searcher: What to search.
        limits: What one request may ask.
        additions: Where `POST /images` adds images; None makes the collection read-only (`POST /images` answers
            403 with ``read_only_reason``). Images already in that folder but not in the collection are made
            searchable first.
        read_only_reason: Why the collection is read-only, for the 403's message.
    """
    limits = limits or ServeLimits()
    if additions is not None and (pending := add_pending(searcher, additions)):
        log.info("searching %d images added since the collection was catalogued (%s)", pending, additions.folder)
    app = FastAPI(title="ris: reverse image search", version="0.1.0",
                  description=f"Search {searcher.size:,} images ({searcher.description}) by example.")
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
        refresh(searcher, additions)
        if label is not None and label not in classes and label not in searcher.added.labels:
            raise SearchError(400, f"unknown class {label!r}: the collection has {len(classes)} classes "
                                   f"(for example {', '.join(sorted(classes)[:5])})")
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
            if len(hits) >= k or depth >= searcher.size:
                return [Hit(rank, hit.row, hit.path, hit.label, hit.distance)
                        for rank, hit in enumerate(hits[:k], start=1)]
            depth = min(4 * depth, searcher.size)

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
        return await anyio.to_thread.run_sync(run_search, data, image.filename or "upload", k, label,
                                              limiter=limiter)

    @app.post("/images", summary="Add images to the collection: searchable at once, kept by the next `dvc repro`",
              status_code=201, responses={200: {"description": "every image was already in the collection"}})
    async def add(images: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, ...)")],
                  label: Annotated[str, Form(alias="class", description="their class (a new one is allowed)")],
                  ) -> JSONResponse:
        if additions is None:
            raise SearchError(403, f"images cannot be added: {read_only_reason}")
        if len(images) > limits.max_files:
            raise SearchError(413, f"{len(images)} images in one request, the limit is {limits.max_files}")
        uploads = []
        for upload in images:
            name = upload.filename or "upload"
            data = await upload.read(limits.max_upload_bytes + 1)
            if len(data) > limits.max_upload_bytes:
                raise SearchError(413, f"{name}: larger than the upload limit of {limits.max_upload_bytes:,} bytes")
            if not data:
                raise SearchError(400, f"{name}: empty upload, no bytes")
            uploads.append((name, data))
        added = await anyio.to_thread.run_sync(add_images, searcher, additions, label, uploads, limiter=limiter)
        new = sum(item["new"] for item in added)
        return JSONResponse({"added": new, "images": added, "collection": searcher.size},
                            status_code=201 if new else 200)

    def checked_row(image_id: int) -> int:
        refresh(searcher, additions)
        if not 0 <= image_id < searcher.size:
            raise SearchError(404, f"no image {image_id}: ids run from 0 to {searcher.size - 1}")
        return image_id

    @app.get("/images/{image_id}", summary="A collection image, by id (the ids /search returns)")
    def collection_image(image_id: int) -> FileResponse:
        return FileResponse(image_file(checked_row(image_id)))

    def image_file(row: int) -> Path:
        """The row's file by an absolute path (the server may change its working directory after it starts)."""
        return images_dir / searcher.relative_paths[row] if row < len(searcher.index) else searcher.path(row)

    @lru_cache(maxsize=4096)
    def thumbnail_bytes(row: int) -> bytes:
        image = open_image(image_file(row))
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
        refresh(searcher, additions)
        return {"status": "ok", "images": searcher.size, "added": len(searcher.added.labels),
                "cell": searcher.description}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Request counts and latencies (Prometheus)")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.prometheus_text(), media_type="text/plain; version=0.0.4")

    return app
