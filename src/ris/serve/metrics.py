"""Request counts and latency percentiles of the service, in Prometheus' text exposition format."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

QUANTILES = (0.5, 0.9, 0.99)
WINDOW = 10_000
"""Latency quantiles are over the last this many requests of each route (bounded memory, however long it runs)."""


class RequestMetrics:
    """Thread-safe counts per (route, status) and a bounded window of latencies per route."""

    def __init__(self, window: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._seconds: dict[str, deque[float]] = {}
        self._sums: Counter[str] = Counter()
        self._window = window

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[(route, status)] += 1
            self._seconds.setdefault(route, deque(maxlen=self._window)).append(seconds)
            self._sums[route] += seconds

    def prometheus_text(self) -> str:
        """``ris_requests_total`` (a counter by route and status) and ``ris_request_seconds`` (a summary by route:
        quantiles over the recent window, sum and count over the whole run)."""
        with self._lock:
            counts = dict(self._counts)
            windows = {route: np.array(values) for route, values in self._seconds.items()}
            sums = dict(self._sums)
        lines = ["# HELP ris_requests_total HTTP requests served, by route and status.",
                 "# TYPE ris_requests_total counter"]
        lines += [f'ris_requests_total{{route="{route}",status="{status}"}} {count}'
                  for (route, status), count in sorted(counts.items())]
        lines += ["# HELP ris_request_seconds Time to answer a request, by route (quantiles over the last "
                  f"{self._window} requests).", "# TYPE ris_request_seconds summary"]
        for route, values in sorted(windows.items()):
            for quantile in QUANTILES:
                lines.append(f'ris_request_seconds{{route="{route}",quantile="{quantile}"}} '
                             f"{float(np.quantile(values, quantile)):.6f}")
            total = sum(count for (name, _), count in counts.items() if name == route)
            lines.append(f'ris_request_seconds_sum{{route="{route}"}} {sums[route]:.6f}')
            lines.append(f'ris_request_seconds_count{{route="{route}"}} {total}')
        return "\n".join(lines) + "\n"
