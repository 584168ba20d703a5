"""The collector as a subprocess, as it runs in a pod: env in, logs to a file, /metrics scraped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from collector.http import scrape_totals
from embedded.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


class CollectorProcess:
    """``python -m collector`` with the given environment."""

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, name: str = "collector", module: str = "collector"
    ) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HTTP_PORT": str(self.port),
            "LOG_FORMAT": "text",
            "SESSION_TIMEOUT_MS": "6000",
            "MAX_POLL_INTERVAL_MS": "20000",
            "FLUSH_GRACE_SECONDS": "1",
            "COMMIT_INTERVAL_SECONDS": "1",
            "ANOMALY_ENABLED": "false",  # decode-level tests; the anomaly tests turn it on
            **env,
        }
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.module = module

    def start(self) -> CollectorProcess:
        """Start the process (a new one each call)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=log, cwd=ROOT
        )
        return self

    def total(self, metric: str) -> float:
        """Sum of a metric over all label sets."""
        return scrape_totals(self.port).get(metric, 0.0)

    def probe(self, path: str) -> int:
        """HTTP status of a health endpoint (0 if unreachable)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` until true; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"collector exited ({self.proc.returncode}) waiting for {what}:\n{self.tail()}")
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, no chance to flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        """The end of the log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
