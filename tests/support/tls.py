"""TLS for tests: a throw-away PKI, a TLS-terminating proxy, and a Tansu broker reached only through it.

Tansu 0.6 speaks plaintext only (its ``--cert`` flag is accepted and ignored, and its SASL handshake
does not answer librdkafka), so TLS is put in front of it the way a service mesh or a TLS load
balancer would: :class:`TlsProxy` terminates TLS (optionally requiring a client certificate) and
forwards plaintext to the server. :class:`TlsTansu` advertises the proxy's address, so every
connection a Kafka client makes -- bootstrap, partition leaders, group coordinator -- is TLS.
The same proxy in front of moto gives an HTTPS S3 endpoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from embedded.servers import LOOPBACK, TansuBroker, free_port


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with ``client_key_password``
    client_key_password: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *, ca: bool = False, server: bool = False,
) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, name: str = "test", client_key_password: str = "client-key-pass") -> Pki:
    """A fresh CA with a server and a client certificate, written as PEM files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(f"{name} CA", ca_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(LOOPBACK, server_key, (f"{name} CA", ca_key), server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("fms-collector", client_key, (f"{name} CA", ca_key))

    def write(file: str, data: bytes) -> Path:
        path = folder / file
        path.write_bytes(data)
        return path

    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    encrypted = serialization.BestAvailableEncryption(client_key_password.encode())
    traditional = serialization.PrivateFormat.TraditionalOpenSSL
    pkcs8 = serialization.PrivateFormat.PKCS8
    return Pki(
        ca=write(f"{name}-ca.pem", ca.public_bytes(pem)),
        server_cert=write(f"{name}-server.pem", server.public_bytes(pem)),
        server_key=write(f"{name}-server.key", server_key.private_bytes(pem, traditional, plain)),
        client_cert=write(f"{name}-client.pem", client.public_bytes(pem)),
        client_key=write(f"{name}-client.key", client_key.private_bytes(pem, pkcs8, encrypted)),
        client_key_password=client_key_password,
    )


class TlsProxy:
    """Terminates TLS on a local port and forwards the plaintext bytes to ``target_port``.

    With ``client_ca`` set, a client certificate signed by that CA is required (mutual TLS).
    ``handshake_failures`` counts connections refused during the TLS handshake.
    """

    def __init__(self, target_port: int, pki: Pki, *, client_ca: Path | None = None, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port if port is not None else free_port()
        self.handshake_failures = 0
        self.connections = 0
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(pki.server_cert, pki.server_key)
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(client_ca)
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` of the TLS side."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        """Listen and serve in daemon threads."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, name=f"tls-proxy-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set() and self._listener is not None:
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            tls = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            raw.close()
            return
        tls.settimeout(None)
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
        except OSError:
            tls.close()
            return
        upstream.settimeout(None)
        self.connections += 1
        with self._lock:
            self._sockets |= {tls, upstream}
        self._pump(tls, upstream)

    def _pump(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Both directions in one thread: an SSL object must not be read and written concurrently."""
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([tls, upstream], [], [], 0.5)
                if tls in readable or tls.pending():
                    data = tls.recv(65536)
                    while tls.pending():
                        data += tls.recv(tls.pending())
                    if not data:
                        break
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    tls.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (tls, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._sockets -= {tls, upstream}


class TlsTansu(TansuBroker):
    """A Tansu broker that advertises ``advertised_port`` (a :class:`TlsProxy` in front of it)."""

    def __init__(self, advertised_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.advertised_port = advertised_port

    def _command(self) -> list[str]:
        command = super()._command()
        command[command.index("--advertised-listener-url") + 1] = f"tcp://{LOOPBACK}:{self.advertised_port}"
        return command


class KafkaOverTls:
    """A Tansu broker reachable only through a mutual-TLS proxy; ``client_config`` connects to it."""

    def __init__(self, pki: Pki, log_dir: Path) -> None:
        self.pki = pki
        self.proxy_port = free_port()
        self.broker = TlsTansu(self.proxy_port, log_dir=log_dir)
        self.proxy = TlsProxy(self.broker.port, pki, client_ca=pki.ca, port=self.proxy_port)

    @property
    def bootstrap(self) -> str:
        """The TLS address clients use."""
        return self.proxy.address

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings of a client with the test CA and the client certificate."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.pki.ca),
            "ssl.certificate.location": str(self.pki.client_cert),
            "ssl.key.location": str(self.pki.client_key),
            "ssl.key.password": self.pki.client_key_password,
        }

    def env(self) -> dict[str, str]:
        """The collector's environment for the same connection."""
        return {
            "KAFKA_BROKERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_LOCATION": str(self.pki.ca),
            "KAFKA_SSL_CERTIFICATE_LOCATION": str(self.pki.client_cert),
            "KAFKA_SSL_KEY_LOCATION": str(self.pki.client_key),
            "KAFKA_SSL_KEY_PASSWORD": self.pki.client_key_password,
        }

    def __enter__(self) -> Self:
        self.proxy.start()
        self.broker.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.broker.stop()
        self.proxy.stop()
