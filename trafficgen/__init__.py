"""Traffic generator for the six factory IoT domains: realistic messages, wire encodings, faults.

Used as a library by tests and benchmarks (``TrafficGenerator(...).generate(n)``, ``produce``) and
as a command (``python -m trafficgen --brokers HOST:PORT ...``).
"""

from __future__ import annotations

from trafficgen.examples import CANONICAL_EXAMPLES, canonical_example, canonical_examples
from trafficgen.faults import EXPECTED_FLAG, EXPECTED_REASON, FAULT_KINDS
from trafficgen.generator import GeneratedMessage, TrafficGenerator, expected_counts, expected_flags
from trafficgen.producer import create_topics, produce

__all__ = [
    "CANONICAL_EXAMPLES",
    "EXPECTED_FLAG",
    "EXPECTED_REASON",
    "FAULT_KINDS",
    "GeneratedMessage",
    "TrafficGenerator",
    "canonical_example",
    "canonical_examples",
    "create_topics",
    "expected_counts",
    "expected_flags",
    "produce",
]
