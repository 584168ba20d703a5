"""Typed, frozen settings built once from the environment at start (SPEC §4–5).

Each component calls :func:`collector_settings` (or its own loader) with ``os.environ``; nothing
reads the environment at import time. A missing or invalid value raises
:class:`common.errors.ConfigError` whose message is one line naming the variable and what is
expected. Secrets are never part of a message or a repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from common.errors import ConfigError
from domains import DOMAINS
from domains.decode import WireFormat
from storage.factory import StorageConfig

_DOMAIN_TOPICS = tuple(d.topic.name for d in DOMAINS.values())


class KafkaSettings(BaseModel):
    """Broker connection, security and topic selection.

    Security (librdkafka names in brackets): KAFKA_SECURITY_PROTOCOL is PLAINTEXT, SSL, SASL_PLAINTEXT
    or SASL_SSL. SASL (KAFKA_SASL_MECHANISM PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) needs
    KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD. TLS: KAFKA_SSL_CA_LOCATION [ssl.ca.location] is the
    PEM bundle that signed the brokers' certificates (default: the system CA store); mutual TLS adds
    KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION (PEM files, e.g. mounted from a Secret)
    and KAFKA_SSL_KEY_PASSWORD if the key is encrypted; KAFKA_SSL_ENDPOINT_IDENTIFICATION=false turns
    off the broker host-name check (never in production). Files are checked at start; passwords
    never appear in a repr or an error message.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    _PROTOCOLS: ClassVar[tuple[str, ...]] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    _MECHANISMS: ClassVar[tuple[str, ...]] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

    kafka_brokers: str = Field(min_length=1, description="bootstrap servers, host:port[,host:port]")
    kafka_topic: tuple[str, ...] = Field(default=_DOMAIN_TOPICS)
    kafka_group_id: str = Field(default="fms-realtime-collector", min_length=1)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(default=None, repr=False)
    kafka_ssl_ca_location: str | None = None
    kafka_ssl_certificate_location: str | None = None
    kafka_ssl_key_location: str | None = None
    kafka_ssl_key_password: str | None = Field(default=None, repr=False)
    kafka_ssl_endpoint_identification: bool = True
    schema_registry_url: str | None = None
    wire_format: WireFormat = WireFormat.AUTO
    wire_formats: dict[str, WireFormat] = Field(default_factory=dict)

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers(cls, value: str) -> str:
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism")
    @classmethod
    def _upper_choice(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        choices = cls._PROTOCOLS if info.field_name == "kafka_security_protocol" else cls._MECHANISMS
        if value.strip().upper() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value.strip().upper()

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        """Combinations that would silently connect without the security the operator asked for.

        Raises ConfigError itself (not ValueError) so the message names the variables, not "settings".
        """
        import os

        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ConfigError(
                f"KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD: all required when "
                f"KAFKA_SECURITY_PROTOCOL={protocol}"
            )
        if not sasl and (self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password):
            raise ConfigError(
                f"KAFKA_SASL_*: set, but KAFKA_SECURITY_PROTOCOL={protocol} does not authenticate "
                f"(use SASL_SSL, or SASL_PLAINTEXT on a trusted network)"
            )
        files = {
            "KAFKA_SSL_CA_LOCATION": self.kafka_ssl_ca_location,
            "KAFKA_SSL_CERTIFICATE_LOCATION": self.kafka_ssl_certificate_location,
            "KAFKA_SSL_KEY_LOCATION": self.kafka_ssl_key_location,
        }
        given = [name for name, path in files.items() if path]
        if not tls and (given or self.kafka_ssl_key_password):
            names = ", ".join(given) or "KAFKA_SSL_KEY_PASSWORD"
            raise ConfigError(
                f"{names}: set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS (use SSL or SASL_SSL)"
            )
        if bool(self.kafka_ssl_certificate_location) != bool(self.kafka_ssl_key_location):
            raise ConfigError(
                "KAFKA_SSL_CERTIFICATE_LOCATION, KAFKA_SSL_KEY_LOCATION: give both for mutual TLS, or neither"
            )
        for name in given:
            path = files[name]
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ConfigError(f"{name}: expected a readable PEM file (not found or unreadable: {path})")
        return self

    @field_validator("kafka_topic", mode="before")
    @classmethod
    def _topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(t.strip() for t in value.split(",") if t.strip()) or _DOMAIN_TOPICS
        unknown = [t for t in value if t not in _DOMAIN_TOPICS]
        if unknown:
            raise ValueError(f"unknown topic(s) {', '.join(unknown)}; expected a subset of {', '.join(_DOMAIN_TOPICS)}")
        return value

    @field_validator("wire_formats", mode="before")
    @classmethod
    def _formats(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected topic=format[,topic=format]")
            value = {k.strip(): v.strip() for k, v in pairs}
        return value

    def wire_format_for(self, topic: str) -> WireFormat:
        """The pinned format of ``topic`` (or auto-detection)."""
        return self.wire_formats.get(topic, self.wire_format)

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by consumers, producers and admin clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_brokers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = self.kafka_sasl_password or ""
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            tls = {
                "ssl.ca.location": self.kafka_ssl_ca_location,
                "ssl.certificate.location": self.kafka_ssl_certificate_location,
                "ssl.key.location": self.kafka_ssl_key_location,
                "ssl.key.password": self.kafka_ssl_key_password,
            }
            config.update({k: v for k, v in tls.items() if v})
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if self.kafka_ssl_endpoint_identification else "none"
            )
        return config


class CollectorSettings(BaseModel):
    """Settings of the realtime collector (``python -m collector``)."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    kafka: KafkaSettings
    storage: StorageConfig
    flush_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    max_buffer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    batch_size: int = Field(default=20000, ge=1, le=1_000_000)
    worker_threads: int = Field(default=2, ge=1, le=64)  # topics of a batch decoded and evaluated at once
    batch_wait_seconds: float = Field(default=0.1, ge=0, le=10)  # after a batch's first message
    poll_timeout_seconds: float = Field(default=0.2, gt=0, le=10)
    commit_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    shutdown_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    session_timeout_ms: int = Field(default=45_000, ge=6_000)
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="json", pattern=r"^(json|text)$")
    anomaly_enabled: bool = True
    write_files: bool = True  # False: the standalone anomaly worker (alarms + DLQ, no Parquet)
    kafka_auto_offset_reset: str = Field(default="earliest", pattern=r"^(earliest|latest)$")
    dims_prefix: str = Field(default="_dims/", min_length=1)
    dims_reload_seconds: float = Field(default=60.0, gt=0)
    sweep_interval_seconds: float = Field(default=10.0, gt=0, le=60)
    state_checkpoint_seconds: float = Field(default=30.0, gt=0)
    watermark_interval_seconds: float = Field(default=15.0, gt=0, le=3600)  # completeness progress objects


def _lower_env(env: Mapping[str, str], model: type[BaseModel]) -> dict[str, str]:
    fields = set(model.model_fields)
    return {k.lower(): v for k, v in env.items() if k.lower() in fields and v != ""}


def _one_line(exc: ValidationError, prefix: str = "") -> ConfigError:
    error = exc.errors()[0]
    variable = (prefix + "_".join(str(p) for p in error["loc"] if p != "kafka")).upper() or "settings"
    given = error.get("input")
    shown = "" if any(s in variable for s in ("PASSWORD", "SECRET", "KEY")) else f" (got {given!r})"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
        shown = ""
    return ConfigError(f"{variable}: {message}{shown if isinstance(given, str | int | float) else ''}")


def kafka_settings(env: Mapping[str, str], default_group: str) -> KafkaSettings:
    """Kafka settings from the environment; ``default_group`` is the component's group id."""
    values: dict[str, Any] = {"kafka_group_id": default_group, **_lower_env(env, KafkaSettings)}
    try:
        return KafkaSettings.model_validate(values)
    except ValidationError as exc:
        raise _one_line(exc) from None


def collector_settings(env: Mapping[str, str], default_group: str = "fms-realtime-collector") -> CollectorSettings:
    """All settings of the realtime collector, validated; raises ConfigError on the first problem."""
    kafka = kafka_settings(env, default_group)
    storage = StorageConfig.from_env(env)
    values: dict[str, Any] = {"kafka": kafka, "storage": storage, **_lower_env(env, CollectorSettings)}
    values.pop("kafka_brokers", None)
    try:
        return CollectorSettings.model_validate(values)
    except ValidationError as exc:
        raise _one_line(exc) from None
