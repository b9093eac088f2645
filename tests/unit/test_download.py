"""download_file against a real loopback HTTP server that can cut connections and honour or ignore Range."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ris.data import download
from ris.data.download import ChecksumError, DownloadError, download_file, extract_archive, md5sum

PAYLOAD = hashlib.sha256(b"seed").digest() * 10_000  # 320 kB of incompressible-looking bytes


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves; ``requests`` records each request's Range header."""

    payload: bytes = PAYLOAD
    support_range: bool = True
    cut_after: int = 100_000  # body bytes sent before a cut connection is closed
    cut_requests: int = 0  # how many of the first requests are cut
    requests: list[str | None] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/file.bin":
                self.send_error(404)
                return
            range_header = self.headers.get("Range")
            state.requests.append(range_header)
            total = len(state.payload)
            start = 0
            if state.support_range and range_header and range_header.startswith("bytes="):
                start = int(range_header[len("bytes=") :].split("-", 1)[0])
            if start >= total and start > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.end_headers()
                state.statuses.append(416)
                return
            status = 206 if start else 200
            self.send_response(status)
            state.statuses.append(status)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            if state.support_range:
                self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(total - start))
            self.end_headers()
            body = state.payload[start:]
            if len(state.requests) <= state.cut_requests:
                # Announce the full length but stop early: the client sees the connection close mid-body.
                body = body[: state.cut_after]
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    return Handler


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServerState, str]]:
    """A loopback HTTP server serving ``/file.bin``; yields its state and the file's URL."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # loopback requests must never go through a proxy
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_md5sum_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD * 5)  # several read chunks
    assert md5sum(path) == _md5(PAYLOAD * 5)


def test_download_with_md5(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "sub" / "file.bin"
    assert download_file(url, dest, md5=_md5(PAYLOAD), progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()
    assert state.requests == [None]


def test_checksum_mismatch_leaves_nothing(server: tuple[ServerState, str], tmp_path: Path) -> None:
    _, url = server
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError) as error:
        download_file(url, dest, md5="0" * 32, progress=False)
    assert "0" * 32 in str(error.value) and _md5(PAYLOAD) in str(error.value)
    assert not dest.exists()
    assert not dest.with_name("file.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, url = server
    state.cut_requests = 1
    dest = tmp_path / "file.bin"
    download_file(url, dest, md5=_md5(PAYLOAD), retries=2, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [None, f"bytes={state.cut_after}-"]
    assert state.statuses == [200, 206]


def test_leftover_part_from_killed_run_is_resumed(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:1234])
    download_file(url, dest, md5=_md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == ["bytes=1234-"]


def test_server_without_range_support_restarts(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, url = server
    state.support_range = False
    state.cut_requests = 1
    dest = tmp_path / "file.bin"
    download_file(url, dest, md5=_md5(PAYLOAD), retries=1, progress=False)
    assert dest.read_bytes() == PAYLOAD
    # The client asked to resume, the server sent the whole file again, and the client started over.
    assert state.requests == [None, f"bytes={state.cut_after}-"]
    assert state.statuses == [200, 200]


def test_always_cut_raises_download_error(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, url = server
    state.cut_requests = 100
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as error:
        download_file(url, dest, retries=2, progress=False)
    message = str(error.value)
    assert url in message and "RIS_DATA_ARCHIVE" in message and "RIS_DATA_DIR" in message
    assert "bytes received" in message
    assert len(state.requests) == 3
    assert not dest.exists()


def test_http_404_is_not_retried(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, url = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(url.replace("file.bin", "missing.bin"), tmp_path / "missing.bin", retries=3, progress=False)
    assert state.requests == []  # the handler records only requests for the served file


def _tar_with(tmp_path: Path, name: str, member: str) -> Path:
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo(member)
        info.size = 3
        bundle.addfile(info, io.BytesIO(b"abc"))
    return archive


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"])
def test_extract_archive_formats(tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / f"bundle{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("top/a/x.txt", "x")
    else:
        mode = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}[suffix]
        with tarfile.open(archive, mode) as bundle:
            info = tarfile.TarInfo("top/a/x.txt")
            info.size = 1
            bundle.addfile(info, io.BytesIO(b"x"))
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "a" / "x.txt").read_text() == "x"


def test_extract_archive_refuses_path_traversal(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match="outside"):
        zip_path = tmp_path / "evil.zip"
        with zipfile.ZipFile(zip_path, "w") as bundle:
            bundle.writestr("fine.txt", "ok")
            bundle.writestr("../escaped.txt", "bad")
        extract_archive(zip_path, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "fine.txt").exists()  # zip members are all checked before any is written
    with pytest.raises(ValueError, match="refusing"):
        extract_archive(_tar_with(tmp_path, "evil.tar.gz", "../escaped.txt"), dest)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("filters", [True, False], ids=["tar filters", "python before 3.11.4"])
def test_tar_escapes_are_refused_with_or_without_extraction_filters(tmp_path: Path, filters: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's Python 3.11.2 has no tarfile filters: the members are then checked before extraction."""
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good = _tar_with(tmp_path, "good.tar.gz", "top/a.txt")
    extract_archive(good, tmp_path / "good")
    assert (tmp_path / "good/top/a.txt").exists()
    with pytest.raises(ValueError, match="refusing"):
        extract_archive(_tar_with(tmp_path, "evil.tar.gz", "../escaped.txt"), tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    link = tarfile.TarInfo("top/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    with tarfile.open(tmp_path / "link.tar", "w") as bundle:
        bundle.addfile(link)
    with pytest.raises(ValueError, match="refusing"):
        extract_archive(tmp_path / "link.tar", tmp_path / "links")


def test_extract_archive_rejects_unknown_type(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.rar"
    archive.write_bytes(b"not really")
    with pytest.raises(ValueError, match="unsupported"):
        extract_archive(archive, tmp_path / "out")
