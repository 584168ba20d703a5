"""``python -m merger hour|day|week [--period NAME] [--domain D ...] [--dry-run]``, ``python -m merger schedule``
or ``python -m merger status``.

``schedule`` runs the three merges in-process on the seed's cron schedules (hour ``1 * * * *``,
day ``5 0 * * *``, week ``10 0 * * 1``, in PARTITION_TIMEZONE) with APScheduler, for setups that
run next to the collector without Kubernetes CronJobs.

``status`` prints, per domain, how fresh the stored data is and the newest complete hour, day and
week (completeness markers), and the same as Prometheus text with ``--prometheus``.

With no ``--period``, merges every complete period that has no merged file or whose sources
changed since it was merged (late minute files, a backfill), oldest first. Storage settings are
the collector's (STORAGE_BACKEND, MINIO_*, GCS_*, LOCAL_STORAGE_DIR); also PARTITION_TIMEZONE,
WEEK_START, MERGE_GRACE_MINUTES, MERGER_MEMORY_MB, MINUTE_KEEP_HOURS, COMPLETENESS_GROUP_ID (the
realtime group whose progress decides completeness, default fms-realtime-collector) and
PUSHGATEWAY_URL (push metrics after a run), MERGER_LEASE_SECONDS (60: how long a killed run's lease
blocks the next; renewed while a run works).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest

from common.errors import CollectorError, ConfigError
from common.logs import setup_logging
from domains import DOMAINS
from merger.complete import status
from merger.metrics import push, status_registry
from merger.periods import Calendar, Grain
from merger.run import MergerConfig, pending_periods, run
from storage.base import ObjectStore
from storage.factory import StorageConfig, open_store


def config_from_env(env: dict[str, str] | os._Environ[str]) -> MergerConfig:
    """Merger settings from the environment; ConfigError names the variable on a bad value."""

    def number(name: str, default: str) -> float:
        raw = env.get(name, default)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number (got {raw!r})") from None
        if value < 0:
            raise ConfigError(f"{name}: must not be negative (got {raw!r})")
        return value

    try:
        calendar = Calendar.of(env.get("PARTITION_TIMEZONE", "UTC"), env.get("WEEK_START", "sunday"))
    except ValueError as exc:
        raise ConfigError(f"WEEK_START: {exc}") from None
    except Exception:  # zoneinfo raises several kinds for unknown names
        raise ConfigError(f"PARTITION_TIMEZONE: unknown time zone {env.get('PARTITION_TIMEZONE')!r}") from None
    return MergerConfig(
        calendar=calendar,
        grace=timedelta(minutes=number("MERGE_GRACE_MINUTES", "5")),
        memory_limit_mb=int(number("MERGER_MEMORY_MB", "512")),
        minute_keep=timedelta(hours=number("MINUTE_KEEP_HOURS", "48")),
        lease_seconds=max(1.0, number("MERGER_LEASE_SECONDS", "60")),
        group=env.get("COMPLETENESS_GROUP_ID") or "fms-realtime-collector",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m merger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grain", choices=["hour", "day", "week", "schedule", "status"])
    parser.add_argument("--period", help="merge only this period, e.g. 20250612_00_01, 20250612, 20250601_20250607")
    parser.add_argument("--domain", action="append", choices=sorted(DOMAINS), help="limit to a domain (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the pending periods and exit")
    parser.add_argument("--now", help="ISO time to use as now (testing, replays)")
    parser.add_argument("--prometheus", action="store_true", help="status: print Prometheus text instead")
    args = parser.parse_args(argv)
    try:
        config = config_from_env(os.environ)
        storage = StorageConfig.from_env(os.environ)
        setup_logging(os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT", "json"))
        store = open_store(storage)
        store.check()
    except ConfigError as exc:
        print(f"merger: configuration error: {exc}", file=sys.stderr)
        return 2
    except CollectorError as exc:
        print(f"merger: cannot start: {exc}", file=sys.stderr)
        return 1
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    if args.grain == "status":
        return print_status(store, config, now, args.prometheus)
    if args.grain == "schedule":
        return schedule(store, config)
    grain = Grain[args.grain.upper()]
    if args.dry_run:
        for domain, periods in pending_periods(store, grain, config, now).items():
            print(f"{domain}: {', '.join(p.name for p in periods) or '-'}")
        return 0
    report = run(store, grain, config, now=now, domains=args.domain, period_name=args.period)
    rows = sum(r.rows for r in report.merged)
    print(
        f"merger {grain.folder}: {len(report.merged)} files merged ({rows:,} rows), "
        f"{len(report.deleted)} files deleted, {len(report.stats)} statistics written, "
        f"{len(report.completed)} periods marked complete{' (skipped: lease held)' if report.skipped else ''}"
    )
    push_status(store, config)
    return 0


def push_status(store: ObjectStore, config: MergerConfig) -> None:
    """Push freshness and completeness gauges when PUSHGATEWAY_URL is set."""
    url = os.environ.get("PUSHGATEWAY_URL")
    if url:
        now = datetime.now(UTC)
        push(status_registry(status(store, config.group, config.calendar), now), url, job="fms-merger")


def print_status(store: ObjectStore, config: MergerConfig, now: datetime, prometheus: bool) -> int:
    """``status``: freshness and the newest complete periods per domain."""
    statuses = status(store, config.group, config.calendar)
    if prometheus:
        print(generate_latest(status_registry(statuses, now)).decode(), end="")
        return 0
    print(f"{'domain':<24}{'newest event (UTC)':<22}{'fresh (s)':>10}  {'newest complete hour':<22}{'day':<10}week")
    for s in statuses:
        newest = f"{s.newest_event:%Y-%m-%d %H:%M:%S}" if s.newest_event else "-"
        fresh = f"{(now - s.newest_event).total_seconds():.0f}" if s.newest_event else "-"
        hour, day, week = (s.newest_complete[g].name if g in s.newest_complete else "-"
                           for g in ("hour", "day", "week"))  # fmt: skip
        print(f"{s.domain:<24}{newest:<22}{fresh:>10}  {hour:<22}{day:<10}{week}")
    return 0


SCHEDULES = {Grain.HOUR: "1 * * * *", Grain.DAY: "5 0 * * *", Grain.WEEK: "10 0 * * 1"}


def schedule(store: object, config: MergerConfig) -> int:
    """Run the merges on the seed's cron schedules until interrupted."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    scheduler = BlockingScheduler(timezone=config.calendar.tz)
    for grain, cron in SCHEDULES.items():
        scheduler.add_job(
            run,
            CronTrigger.from_crontab(cron, timezone=config.calendar.tz),
            args=(store, grain, config),
            id=f"merge-{grain.folder}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
        )
    print("merger schedule: " + ", ".join(f"{g.folder} '{c}'" for g, c in SCHEDULES.items()), flush=True)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
