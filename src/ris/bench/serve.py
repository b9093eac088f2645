"""`ris bench serve`: `POST /search` under load, through HTTP on loopback, against `ris serve` in its own process.

After warming up with one client and then with ``--clients`` (so that every worker is warm), one client at a time,
then ``--clients`` concurrent clients, each sending the same number of requests (bounded in count and time):
latency p50/p95/p99 and requests/s for each, errors, and the server's resident memory before and after (growth
means a leak). The queries are collection images, cycled. Writes ``reports/bench/serve/<device>.json``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ris.bench.extract import device_name
from ris.checks import read_params
from ris.data.catalog import image_root
from ris.embed.store import load_features
from ris.paths import PipelinePaths, write_json_atomic

ONE_CLIENT_P50_TARGET_MS = 35.0
CONCURRENCY_SPEEDUP_TARGET = 1.6


def resident_mib(pid: int) -> float:
    """The resident set size (``VmRSS``) of the process and all its descendants (`ris serve --processes N` runs
    its searchers in child processes), in MiB."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += resident_mib(int(child))
            except FileNotFoundError:  # exited meanwhile
                pass
    return total


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = (process.stderr.read() if process.stderr else "").strip().splitlines()
            raise RuntimeError(f"ris serve exited with status {process.returncode}: {said[-1] if said else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ris serve did not answer {url}/healthz within {timeout_s:.0f} s")


BOUNDARY = "ris-bench-serve-boundary"


def search_body(image: bytes, k: int) -> bytes:
    """A `POST /search` multipart body (``k`` and the ``image`` file), encoded once before the clock starts."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="query.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n")
    return head.encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def load(url: str, queries: list[bytes], clients: int, requests_per_client: int, k: int,
         max_seconds: float) -> dict[str, Any]:
    """``clients`` threads, each with its own keep-alive connection, sending ``requests_per_client`` searches back
    to back.

    The load generator shares the machine's cores with the server, so it is kept lean: bodies are encoded once,
    and each request is one ``http.client`` write and read (httpx's multipart encoding and response handling took
    a noticeable share of two cores under 8 clients).
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.monotonic() + max_seconds
    bodies = [search_body(image, k) for image in queries]
    address = urllib.parse.urlsplit(url)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        try:
            for sent in range(requests_per_client):
                if time.monotonic() > stop_at:
                    return
                body = bodies[(number * requests_per_client + sent) % len(bodies)]
                started = time.perf_counter()
                connection.request("POST", "/search", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                latencies[number].append(time.perf_counter() - started)
                if response.status != 200 or b'"results"' not in payload:
                    errors.append(f"{response.status}: {payload[:200]!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    every = np.array([value for values in latencies for value in values]) * 1e3
    return {"clients": clients, "requests": int(every.size), "errors": len(errors), "first_errors": errors[:5],
            "seconds": seconds, "requests_per_second": every.size / seconds,
            "latency_ms": {"p50": float(np.percentile(every, 50)), "p95": float(np.percentile(every, 95)),
                           "p99": float(np.percentile(every, 99)), "mean": float(every.mean())}}


def run_serve_benchmark(params: Path, *, clients: int, requests_per_client: int, warmup: int, k: int,
                        port: int, max_seconds: float, serve_args: Sequence[str] = ()) -> dict[str, Any]:
    """Start `ris serve` on ``params``' served cell, warm it, load it with one client then ``clients``."""
    cfg = read_params(params)
    paths = PipelinePaths(cfg)
    root = image_root(paths.images_dir)
    rows = load_features(paths.features_dir).rows
    chosen = rows.sample(n=min(200, len(rows)), random_state=0)["path"]
    queries = [(root / path).read_bytes() for path in chosen]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "ris.cli", "serve", "--port", str(port), "--params",
                                str(params), *serve_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_until_up(url, process)
        # Warm every worker, not just one: a worker thread's first searches allocate its own buffers and kernel
        # caches (measured here: a first concurrent round after one-client warm-up ran at 1.51x, the next at 1.75x).
        load(url, queries, 1, warmup, k, max_seconds)
        load(url, queries, clients, max(warmup // clients, 5), k, max_seconds)
        memory_before = resident_mib(process.pid)
        one = load(url, queries, 1, requests_per_client, k, max_seconds)
        many = load(url, queries, clients, requests_per_client, k, max_seconds)
        memory_loaded = resident_mib(process.pid)  # after the first concurrent round: its buffers are allocated
        again = load(url, queries, clients, requests_per_client, k, max_seconds)  # a second round: any growth?
        memory_after = resident_mib(process.pid)
        health = httpx.get(f"{url}/healthz", timeout=5).json()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    speedup = many["requests_per_second"] / one["requests_per_second"]
    return {"date": date.today().isoformat(), "device": device_name(), "cpus": len(os.sched_getaffinity(0)),
            "cell": health["cell"], "images": health["images"], "k": k, "query_images": len(queries),
            "serve_args": list(serve_args),
            "one_client": one, "concurrent": many, "concurrent_again": again,
            "memory_mib": {"after_warmup": memory_before, "after_first_concurrent_round": memory_loaded,
                           "after_second_concurrent_round": memory_after,
                           "growth_over_second_round": memory_after - memory_loaded},
            "targets": {
                "one_client_p50_ms": {"target": ONE_CLIENT_P50_TARGET_MS, "measured": one["latency_ms"]["p50"],
                                      "holds": one["latency_ms"]["p50"] <= ONE_CLIENT_P50_TARGET_MS},
                "concurrency_speedup": {"target": CONCURRENCY_SPEEDUP_TARGET, "measured": speedup,
                                        "holds": speedup >= CONCURRENCY_SPEEDUP_TARGET},
                "no_errors": {"holds": one["errors"] + many["errors"] + again["errors"] == 0}}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ris bench serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="requests per client in each round")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="a round stops sending after this long")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/serve"))
    parser.add_argument("--processes", type=int, default=None, help="passed to `ris serve --processes`")
    parser.add_argument("--workers", type=int, default=None, help="passed to `ris serve --workers`")
    parser.add_argument("--no-compile", action="store_true", help="passed to `ris serve`")
    args = parser.parse_args(argv)
    serve_args = [*([] if args.processes is None else ["--processes", str(args.processes)]),
                  *([] if args.workers is None else ["--workers", str(args.workers)]),
                  *(["--no-compile"] if args.no_compile else [])]
    result = run_serve_benchmark(args.params, clients=args.clients, requests_per_client=args.requests,
                                 warmup=args.warmup, k=args.k, port=args.port, max_seconds=args.max_seconds,
                                 serve_args=serve_args)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "cpu.json"
    write_json_atomic(out, result)
    for name, check in result["targets"].items():
        print(f"{'holds' if check['holds'] else 'MISSED'}: {name} {check.get('measured', '')}")
    print(f"wrote {out}")
    return 0
