"""Command line: produce generated traffic to the domain topics.

    python -m trafficgen --brokers HOST:PORT [--rate MSG_PER_S | --max-speed]
        [--count N | --duration SECONDS] [--domains a,b] [--formats avro,json]
        [--fault-rate 0.01 | --fault kind=rate ...] [--seed N] [--step SECONDS] [--create-topics]

Event times follow the wall clock unless ``--step`` asks for simulated time advancing by that many
seconds per message. ``--brokers`` defaults to the ``KAFKA_BROKERS`` environment variable; TLS and
SASL come from the collector's variables (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
``KAFKA_SSL_*``), checked the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from itertools import islice
from typing import Any

from common.errors import ConfigError
from domains import DOMAINS
from settings import kafka_settings
from trafficgen.encoding import FORMATS
from trafficgen.faults import FAULT_KINDS, spread_rate, validate_rates
from trafficgen.generator import DEFAULT_FORMATS, TrafficGenerator
from trafficgen.producer import Progress, create_topics, produce


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return names


def _fault(text: str) -> tuple[str, float]:
    kind, sep, rate = text.partition("=")
    if not sep or kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE with KIND one of {', '.join(FAULT_KINDS)}")
    try:
        return kind, float(rate)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"rate {rate!r} is not a number") from exc


def client_config(brokers: str, env: Mapping[str, str]) -> dict[str, Any]:
    """librdkafka settings for ``brokers`` with the security the collector's variables in ``env`` ask
    for; raises :class:`ConfigError` naming the variable to fix."""
    return kafka_settings({**env, "KAFKA_BROKERS": brokers}, "trafficgen").client_config()


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m trafficgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=os.environ.get("KAFKA_BROKERS"),
                        help="bootstrap servers (default: $KAFKA_BROKERS)")  # fmt: skip
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="messages per second (token bucket)")
    pace.add_argument("--max-speed", action="store_true", help="produce as fast as possible (the default)")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, help="stop after N messages")
    stop.add_argument("--duration", type=float, help="stop after SECONDS")
    parser.add_argument("--domains", type=lambda t: _names(t, list(DOMAINS), "domain"), default=None,
                        help=f"comma-separated subset of {','.join(DOMAINS)}")  # fmt: skip
    parser.add_argument("--formats", type=lambda t: _names(t, FORMATS, "format"), default=list(DEFAULT_FORMATS),
                        help=f"comma-separated subset of {','.join(FORMATS)}")  # fmt: skip
    faults = parser.add_mutually_exclusive_group()
    faults.add_argument("--fault-rate", type=float, default=0.0, help="total fault rate, spread over all kinds")
    faults.add_argument("--fault", type=_fault, action="append", default=[], metavar="KIND=RATE",
                        help=f"rate of one fault kind ({', '.join(FAULT_KINDS)}); repeatable")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=float, default=None,
                        help="simulated event time: seconds per message (default: wall clock)")  # fmt: skip
    parser.add_argument("--create-topics", action="store_true", help="create missing domain topics first")
    parser.add_argument("--replication", type=int, default=1, help="replication factor for --create-topics")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.brokers:
        parser.error("--brokers is required when KAFKA_BROKERS is not set")
    try:
        config = client_config(args.brokers, os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    rates = dict(args.fault) if args.fault else (spread_rate(args.fault_rate) if args.fault_rate else {})
    try:
        validate_rates(rates)
    except ValueError as exc:
        parser.error(str(exc))
    generator = TrafficGenerator(
        seed=args.seed,
        domains=args.domains,
        formats=args.formats,
        fault_rates=rates,
        step=timedelta(seconds=args.step) if args.step else None,
        live=args.step is None,
    )
    if args.create_topics:
        created = create_topics(args.brokers, generator.domains, replication=args.replication, config=config)
        print(f"created topics: {', '.join(created) or '(none, all existed)'}", flush=True)

    def report(p: Progress) -> None:
        print(f"sent {p.sent:>10,d}  delivered {p.delivered:>10,d}  failed {p.failed:>6,d}  "
              f"{p.rate:>9,.0f} msg/s  {p.elapsed_s:7.1f} s", flush=True)  # fmt: skip

    stream = generator.stream() if args.count is None else islice(generator.stream(), args.count)
    try:
        delivered = produce(
            stream, args.brokers, rate=args.rate, duration_s=args.duration, config=config, progress=report
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"done: {delivered:,d} messages delivered to {', '.join(DOMAINS[d].topic.name for d in generator.domains)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
