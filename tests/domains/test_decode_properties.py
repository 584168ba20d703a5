"""Property: any mix of good and corrupted messages decodes without raising, and every message is
accounted for exactly once (in the rows or in the rejected list)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains import DOMAINS
from domains.decode import BatchDecoder, MessageBatch
from tests.domains.test_decode import encode
from trafficgen.examples import canonical_example

_GOOD = {
    (name, fmt): encode(domain, canonical_example(name), fmt)
    for name, domain in DOMAINS.items()
    for fmt in ("json", "avro", "avro-confluent")
}


@st.composite
def message(draw: st.DrawFn, name: str) -> bytes | None:
    fmt = draw(st.sampled_from(["json", "avro", "avro-confluent"]))
    value = _GOOD[(name, fmt)]
    kind = draw(st.sampled_from(["good", "good", "good", "truncate", "flip", "random", "none", "splice"]))
    if kind == "truncate":
        return value[: draw(st.integers(0, len(value) - 1))]
    if kind == "flip":
        pos = draw(st.integers(0, len(value) - 1))
        return value[:pos] + bytes([value[pos] ^ draw(st.integers(1, 255))]) + value[pos + 1 :]
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "none":
        return None
    if kind == "splice":
        other = _GOOD[(draw(st.sampled_from(list(DOMAINS))), fmt)]
        cut = draw(st.integers(0, min(len(value), len(other))))
        return value[:cut] + other[cut:]
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_is_accounted_for_exactly_once(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(DOMAINS)))
    values = data.draw(st.lists(message(name), min_size=1, max_size=40))
    domain = DOMAINS[name]
    n = len(values)
    batch = MessageBatch(domain.topic.name, values, [0] * n, list(range(n)), [0] * n)
    result = BatchDecoder(domain).decode(batch, datetime.now(UTC))
    rejected = [r.index for r in result.rejected]
    stored = set(result.rows["kafka_offset"].to_list())
    assert len(rejected) == len(set(rejected))
    assert not stored & set(rejected)
    assert stored | set(rejected) == set(range(n))
    assert all(r.reason and r.detail for r in result.rejected)
