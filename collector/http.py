"""``/healthz`` (alive), ``/readyz`` (assigned and storage reachable) and ``/metrics``."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthState:
    """What the probes look at, updated by the main loop."""

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.heartbeat = time.monotonic()
        self.assigned = False
        self.storage_ok = True

    def beat(self) -> None:
        """Record that the main loop is alive."""
        self.heartbeat = time.monotonic()

    def alive(self) -> bool:
        """The main loop ran recently."""
        return time.monotonic() - self.heartbeat < self.stall_seconds

    def ready(self) -> bool:
        """Joined the group (partitions assigned) and the last storage write succeeded."""
        return self.alive() and self.assigned and self.storage_ok


def serve(port: int, state: HealthState, registry: CollectorRegistry) -> Callable[[], None]:
    """Serve the probes and metrics on ``port`` in a daemon thread; returns a stop function."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = state.alive()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n")
            elif self.path == "/readyz":
                ok = state.ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep probes out of logs
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - pod network
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server.shutdown


def scrape_totals(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> dict[str, float]:
    """A running collector's metrics, each summed over its label sets (``{}`` if unreachable).

    Used by the demo, the benchmarks and the tests to follow a collector from outside.
    """
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            totals[base] = totals.get(base, 0.0) + float(value)
    return totals
