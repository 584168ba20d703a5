"""The traffic generator: a deterministic stream of encoded domain messages with injected faults.

Each message picks a domain and a wire format at random, asks that domain's factory for the next
entity's message, possibly injects one fault, and records what the pipeline must make of it
(expected DLQ reason, expected flag, number of rows). Everything random comes from generators
seeded by ``seed``, so the same arguments give the same bytes.

Event time either advances by ``step`` per message from ``start`` (simulated time, the default) or
follows a clock (``live=True``, for producing in real time).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from domains import DOMAINS, Domain
from trafficgen import faults
from trafficgen.encoding import AVRO, AVRO_CONFLUENT, AVRO_FORMATS, FORMATS, JSON, encode_key, encode_value
from trafficgen.faults import DUPLICATE, FAULT_KINDS, GARBAGE_BYTES, TRUNCATED_AVRO
from trafficgen.messages import MessageFactory, floor_ms, make_factory, parse_iso

GARBAGE = "garbage"  # the ``fmt`` of a garbage_bytes message: its bytes are in no format
DEFAULT_FORMATS = (AVRO, JSON, AVRO_CONFLUENT)
# Default event-time advance: each selected domain gets about one message per event-second, so
# an entity reports every N seconds, N being its domain's entity count (about 12-40).
PER_DOMAIN_INTERVAL = timedelta(seconds=1)
_DUPLICATE_POOL = 256  # recent clean messages per domain that a duplicate may copy


@dataclass(frozen=True)
class GeneratedMessage:
    """One encoded message and what the pipeline must make of it."""

    domain: str
    topic: str
    key: bytes
    value: bytes
    fmt: str  # "json" | "avro" | "avro-confluent" | "garbage"
    fault: str | None
    expected_reason: str | None  # DLQ reason the decoder must give; None = decodes fine
    expected_flag: str | None  # flag the anomaly engine adds later ("late_arrival", "duplicate")
    expected_rows: int  # flattened rows when accepted; 0 when expected_reason is not None
    event_time: datetime  # the message's timestamp (aware UTC)
    msg_id: str  # unique and deterministic: same seed, same ids


def expected_rows(domain: Domain, record: Mapping[str, Any]) -> int:
    """Rows a clean ``record`` flattens into: its exploded array's length, else 1."""
    if domain.explode is None:
        return 1
    return len(record[domain.explode])


class TrafficGenerator:
    """Deterministic generator of encoded messages for the six domains (or a subset).

    ``fault_rates`` gives, per fault kind, the probability that a message carries it (kinds are
    exclusive, so the rates must add up to at most 1); a kind that does not apply to the chosen
    domain leaves that message clean. ``step`` is the event-time advance per message (default:
    1 s divided by the number of domains). ``clock`` says what "now" is (default ``datetime.now``)
    and gives the default ``start``; with ``live=True`` event times follow ``clock`` instead of
    ``start``/``step``.
    """

    def __init__(
        self,
        seed: int = 0,
        domains: Sequence[str] | None = None,
        formats: Sequence[str] = DEFAULT_FORMATS,
        fault_rates: Mapping[str, float] | None = None,
        start: datetime | None = None,
        step: timedelta | None = None,
        clock: Callable[[], datetime] | None = None,
        *,
        live: bool = False,
    ) -> None:
        self.seed = seed
        self.domains: tuple[str, ...] = tuple(domains) if domains else tuple(DOMAINS)
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; expected some of {', '.join(DOMAINS)}")
        self.formats: tuple[str, ...] = tuple(formats)
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
        self.fault_rates: dict[str, float] = {k: float(v) for k, v in (fault_rates or {}).items() if v}
        faults.validate_rates(self.fault_rates)
        self.step = step if step is not None else PER_DOMAIN_INTERVAL / len(self.domains)
        if self.step <= timedelta(0):
            raise ValueError(f"step must be positive, got {self.step}")
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.live = live
        first = start if start is not None else self.clock()
        if first.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.start = first.astimezone(UTC)
        self._rng = random.Random(seed)
        self._factories: dict[str, MessageFactory] = {
            d: make_factory(d, random.Random(f"{seed}:{d}")) for d in self.domains
        }
        self._fault_rng = random.Random(f"{seed}:faults")
        self._history: dict[str, deque[GeneratedMessage]] = {d: deque(maxlen=_DUPLICATE_POOL) for d in self.domains}
        self._index = 0
        self._avro_formats = tuple(f for f in self.formats if f in AVRO_FORMATS) or AVRO_FORMATS
        self._cumulative = self._cumulative_rates()

    def _cumulative_rates(self) -> list[tuple[float, str]]:
        total, out = 0.0, []
        for kind in FAULT_KINDS:
            if self.fault_rates.get(kind):
                total += self.fault_rates[kind]
                out.append((total, kind))
        return out

    # -- public ---------------------------------------------------------------------------------

    def generate(self, n: int) -> list[GeneratedMessage]:
        """The next ``n`` messages."""
        return list(islice(self.stream(), n))

    def stream(self) -> Iterator[GeneratedMessage]:
        """Messages forever (continuing where the previous call stopped)."""
        while True:
            yield self._next()

    def __iter__(self) -> Iterator[GeneratedMessage]:
        return self.stream()

    # -- one message ----------------------------------------------------------------------------

    def _event_time(self) -> datetime:
        if self.live:
            return floor_ms(self.clock().astimezone(UTC))
        return floor_ms(self.start + self._index * self.step)

    def _pick_fault(self, domain: str) -> str | None:
        if not self._cumulative:
            return None
        draw = self._rng.random()
        for bound, kind in self._cumulative:
            if draw < bound:
                return kind if faults.applies(kind, domain) else None
        return None

    def _next(self) -> GeneratedMessage:
        rng = self._rng
        domain_name = rng.choice(self.domains)
        fmt = rng.choice(self.formats)
        kind = self._pick_fault(domain_name)
        at = self._event_time()
        msg_id = f"g{self.seed}-{self._index:09d}"
        self._index += 1
        history = self._history[domain_name]
        if kind == DUPLICATE:
            if history:
                original = history[rng.randrange(len(history))]
                return replace(original, fault=DUPLICATE, expected_flag=faults.EXPECTED_FLAG[DUPLICATE], msg_id=msg_id)
            kind = None  # nothing to duplicate yet

        domain = DOMAINS[domain_name]
        record = self._factories[domain_name].next(at)
        key = encode_key(domain, record)
        event_time = parse_iso(record["timestamp"])
        reason: str | None = None
        flag: str | None = None
        if kind is None:
            value = encode_value(domain, record, fmt)
        elif kind == GARBAGE_BYTES:
            fmt = GARBAGE
            value = faults.garbage_bytes(domain, self._fault_rng)
        elif kind == TRUNCATED_AVRO:
            fmt = rng.choice(self._avro_formats)
            header = 5 if fmt == AVRO_CONFLUENT else 0
            value = faults.truncate(domain, encode_value(domain, record, fmt), self._fault_rng, header)
        else:
            if kind in faults.JSON_ONLY:
                fmt = JSON
            record = faults.mutate(kind, domain, record, self._fault_rng)
            value = encode_value(domain, record, fmt)
        if kind is not None:
            reason = faults.expected_reason(kind, domain_name)
            flag = faults.EXPECTED_FLAG.get(kind)
        message = GeneratedMessage(
            domain=domain_name,
            topic=domain.topic.name,
            key=key,
            value=value,
            fmt=fmt,
            fault=kind,
            expected_reason=reason,
            expected_flag=flag,
            expected_rows=0 if reason is not None else expected_rows(domain, record),
            event_time=event_time,
            msg_id=msg_id,
        )
        if kind is None:
            history.append(message)
        return message


def expected_counts(messages: Iterable[GeneratedMessage]) -> dict[str, dict[str, Any]]:
    """Per domain: rows the decoder must produce and rejected messages per DLQ reason.

    ``{"equipment_metrics": {"rows": 1234, "rejected": {"schema_error": 3}}, ...}``; rows are
    decoded rows before de-duplication (an injected duplicate counts its rows again).
    """
    rows: Counter[str] = Counter()
    rejected: dict[str, Counter[str]] = {}
    for m in messages:
        rows[m.domain] += m.expected_rows
        per_domain = rejected.setdefault(m.domain, Counter())
        if m.expected_reason is not None:
            per_domain[m.expected_reason] += 1
    return {d: {"rows": rows[d], "rejected": dict(rejected[d])} for d in rejected}


def expected_flags(messages: Iterable[GeneratedMessage]) -> dict[str, dict[str, int]]:
    """Per domain: messages that must be stored and flagged, per flag (late_arrival, duplicate)."""
    out: dict[str, Counter[str]] = {}
    for m in messages:
        if m.expected_flag is not None:
            out.setdefault(m.domain, Counter())[m.expected_flag] += 1
    return {d: dict(c) for d, c in out.items()}
