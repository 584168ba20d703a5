"""An HTTP proxy in front of the S3 server that injects storage faults: errors, 403s, latency, held uploads.

Requests really travel: the collector's ``minio`` SDK talks HTTP to this proxy, which forwards to the
real S3 server (moto) unless a fault rule answers first. Rules can change while a scenario runs.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from embedded.servers import LOOPBACK, free_port

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


class HttpFaultProxy:
    """Forwards S3 requests to ``target`` unless a fault applies.

    - ``error_rate`` / ``error_status``: answer that share of requests (of ``error_methods``) with an
      S3 error (503 SlowDown, 500 InternalError or 403 AccessDenied) without forwarding them;
    - ``delay``: seconds to wait before forwarding each request (a slow server);
    - ``hold_puts``: PUTs whose path contains ``hold_match`` wait (body already received) until
      :meth:`release` -- an upload "in flight" for as long as a test likes; ``put_seen`` is set when
      the first such PUT arrives.
    """

    def __init__(self, target_host: str, target_port: int, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.error_rate = 0.0
        self.error_status = 503
        self.error_methods: frozenset[str] = frozenset({"PUT", "GET", "HEAD", "DELETE", "POST"})
        self.delay = 0.0
        self.hold_puts = False
        self.hold_match = ""
        self.put_seen = threading.Event()
        self.held = 0
        self._gate = threading.Event()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.answered: Counter[str] = Counter()  # "forwarded", "503", "403", ...
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        """``host:port`` for MINIO_ENDPOINT."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        """Listen in a thread."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="http-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening; held requests are released."""
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        """Let held PUTs through (and stop holding new ones)."""
        self.hold_puts = False
        self._gate.set()

    def clear(self) -> None:
        """No faults any more."""
        self.error_rate, self.delay = 0.0, 0.0
        self.release()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            fail = method in self.error_methods and self._rng.random() < self.error_rate
        if fail:
            self._error(handler, self.error_status)
            return
        if method == "PUT" and self.hold_puts and self.hold_match in handler.path:
            self.held += 1
            self.put_seen.set()
            self._gate.wait()
        if self.delay:
            time.sleep(self.delay)
        try:
            conn = http.client.HTTPConnection(*self.target, timeout=60)
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
            conn.request(method, handler.path, body=body if body or method in ("PUT", "POST") else None,
                         headers=headers)  # fmt: skip
            response = conn.getresponse()
            data = response.read()
            conn.close()
        except OSError:
            self._error(handler, 503)
            return
        with self._lock:
            self.answered["forwarded"] += 1
        handler.send_response(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                handler.send_header(k, v)
        handler.send_header("Content-Length", response.getheader("Content-Length") or str(len(data))
                            if method == "HEAD" else str(len(data)))  # fmt: skip
        handler.end_headers()
        if method != "HEAD":
            with contextlib.suppress(OSError):
                handler.wfile.write(data)

    def _error(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.answered[str(status)] += 1
        code = _CODES.get(status, "InternalError")
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test '
            f"proxy</Message><Resource>{handler.path}</Resource><RequestId>fault</RequestId></Error>"
        ).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body) if handler.command != "HEAD" else 0))
        handler.end_headers()
        if handler.command != "HEAD":
            with contextlib.suppress(OSError):
                handler.wfile.write(body)
