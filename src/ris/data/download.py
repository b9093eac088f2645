"""Fetch and unpack dataset archives: resumable HTTP downloads, md5 checks and safe extraction."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path


from ris.errors import UserFacingError
from ris.progress import Progress

logger = logging.getLogger("ris.data")

CHUNK_BYTES = 1 << 20
MIB = 1 << 20  # progress is counted in MiB
RETRY_WAIT_S = 1.0
"""Base pause between download attempts; it grows linearly with the attempt number."""

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)

_HINT = (
    "Download the archive some other way and point 'data.archive' (or env RIS_DATA_ARCHIVE) at the local copy, "
    "or point 'data.source_dir' (or env RIS_DATA_DIR) at an already extracted image folder."
)


class ChecksumError(UserFacingError, RuntimeError):
    """A file's md5 differs from the expected one."""


class DownloadError(UserFacingError, RuntimeError):
    """A download failed after every allowed attempt."""


class _TransferError(Exception):
    """One download attempt ended early; the next attempt may resume it."""


def md5sum(path: Path) -> str:
    """Return the hex md5 of a file, read in chunks so large archives never sit in memory."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def is_archive(path: Path) -> bool:
    """Whether ``path``'s name ends with a suffix that :func:`extract_archive` understands."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _content_range_start(header: str | None) -> int | None:
    """Return N of a ``Content-Range: bytes N-M/T`` header, or None when it is absent or malformed."""
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[len("bytes ") :].split("-", 1)[0])
    except ValueError:
        return None


def _attempt(opener: urllib.request.OpenerDirector, url: str, part: Path, timeout_s: float, progress: bool) -> None:
    """Run one transfer into ``part``, appending when the server honours a Range request.

    Raises:
        _TransferError: the connection broke or delivered fewer bytes than announced.
        urllib.error.HTTPError: the server refused the request.
    """
    offset = part.stat().st_size if part.exists() else 0
    total: int | None = None
    request = urllib.request.Request(url, headers={"User-Agent": "ris-data/0.1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with opener.open(request, timeout=timeout_s) as response:
            if offset and response.status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    # The server sent a different slice than asked for: appending it would corrupt the file.
                    part.unlink()
                    raise _TransferError(f"server answered Range bytes={offset}- with Content-Range {start}")
                mode = "ab"
            else:
                # No Range support (200): the body is the whole file again, so start over.
                offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with (
                open(part, mode) as handle,
                # A resumed download counts what is left (so the rate is this run's); MiB as decimals, not rounded.
                Progress(f"download {part.name.removesuffix('.part')}", round((total - offset) / MIB, 1) if total
                         else 0, "MiB", enabled=progress) as counter,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    counter.update(len(chunk) / MIB)
    except urllib.error.HTTPError:
        raise
    except (OSError, http.client.HTTPException) as error:
        # URLError, resets and timeouts are OSErrors; IncompleteRead and friends are HTTPExceptions.
        raise _TransferError(f"{type(error).__name__}: {error}") from error
    received = part.stat().st_size
    # http.client returns b"" rather than raising when a connection closes early, so compare with the header.
    if total is not None and received < total:
        raise _TransferError(f"connection closed after {received} of {total} bytes")


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    timeout_s: float = 30.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming interrupted transfers, and verify its md5.

    Bytes go to ``dest`` + ".part"; only a complete (and, with ``md5``, verified) file is renamed to ``dest``, so a
    killed download never leaves a half file there. A ``.part`` left by an earlier run is resumed.

    Args:
        url: HTTP(S) address of the file.
        dest: Final path of the file; its folder is created.
        md5: Expected hex md5, or None to skip the check.
        timeout_s: Socket timeout of each attempt, in seconds.
        retries: How many more attempts follow a broken transfer.
        progress: Show progress (a bar on a terminal, log lines otherwise).

    Returns:
        ``dest``.

    Raises:
        DownloadError: the transfer failed on every attempt, or the server refused it.
        ChecksumError: the complete file's md5 differs from ``md5`` (the partial file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # A fresh opener per call reads the proxy environment now, not when urllib first ran in this process.
    opener = urllib.request.build_opener()
    attempts = max(retries, 0) + 1
    started = time.perf_counter()
    last_problem = ""
    for attempt in range(1, attempts + 1):
        try:
            _attempt(opener, url, part, timeout_s, progress)
            break
        except urllib.error.HTTPError as error:
            if error.code == 416 and part.exists():
                # Range not satisfiable: the leftover .part is stale or already too long; start over.
                part.unlink()
                last_problem = "HTTP 416 for a resumed request"
            elif error.code < 500:
                # 4xx errors are not transient: retrying would only repeat them.
                raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}. {_HINT}") from error
            else:
                last_problem = f"HTTP {error.code} {error.reason}"
        except _TransferError as error:
            last_problem = str(error)
        received = part.stat().st_size if part.exists() else 0
        logger.warning("download attempt %d/%d of %s failed: %s", attempt, attempts, url, last_problem)
        if attempt == attempts:
            kept = f" (kept in {part}; the next run resumes it)" if received else ""
            raise DownloadError(
                f"could not download {url}: {attempts} attempts failed, {received} bytes received{kept}; "
                f"last problem: {last_problem}. {_HINT}"
            )
        time.sleep(RETRY_WAIT_S * attempt)

    if md5 is not None:
        actual = md5sum(part)
        if actual.lower() != md5.lower():
            part.unlink()
            raise ChecksumError(f"md5 of {url} is {actual}, expected {md5}; the downloaded file was deleted")
    os.replace(part, dest)
    size = dest.stat().st_size
    logger.info("downloaded %s -> %s (%d bytes) in %.1f s", url, dest, size, time.perf_counter() - started)
    return dest


def _check_member_paths(archive: Path, names: list[str], dest: Path) -> None:
    root = dest.resolve()
    for name in names:
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"{archive}: member {name!r} would be written outside {dest}; refusing it")


def _check_tar_members(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """What the "data" filter refuses, for Pythons without extraction filters (before 3.11.4)."""
    _check_member_paths(archive, [member.name for member in members], dest)
    root = dest.resolve()
    for member in members:
        if member.isdev():
            raise ValueError(f"{archive}: member {member.name!r} is a device file; refusing it")
        if member.issym() or member.islnk():
            base = (root / member.name).parent if member.issym() else root
            if not (base / member.linkname).resolve().is_relative_to(root):
                raise ValueError(f"{archive}: member {member.name!r} links outside {dest}; refusing it")


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a .zip or .tar(.gz/.tgz/.bz2/.xz) archive into ``dest`` (created if needed).

    Members that would land outside ``dest`` (absolute paths, "..", links pointing out) are refused. A refused tar
    member may be found after earlier members were written, so extract into a fresh folder and discard it on error.

    Raises:
        ValueError: the archive type is not supported, or a member escapes ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    started = time.perf_counter()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            # Check every member before writing any, so a hostile zip writes nothing.
            _check_member_paths(archive, [member.filename for member in members], dest)
            bundle.extractall(dest)
    elif name.endswith(TAR_SUFFIXES):
        with tarfile.open(archive) as bundle:
            if hasattr(tarfile, "data_filter"):
                try:
                    # The "data" filter refuses escaping paths and links, device files, and clears unsafe mode bits.
                    bundle.extractall(dest, filter="data")
                except tarfile.FilterError as error:
                    raise ValueError(f"{archive}: {error}; refusing it") from error
            else:  # Python before 3.11.4 has no extraction filters: check every member first, as for a zip
                _check_tar_members(archive, bundle.getmembers(), dest)
                bundle.extractall(dest)
    else:
        raise ValueError(f"{archive}: unsupported archive type; expected one of {', '.join(ARCHIVE_SUFFIXES)}")
    logger.info("extracted %s -> %s in %.1f s", archive, dest, time.perf_counter() - started)
