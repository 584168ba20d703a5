"""``python -m backfill [--from ISO] [--until ISO] [--rate MSG_PER_S] [--alarms] [--no-merge]``.

Loads every offset before the realtime collector's position into the same layout, resumably, then
runs the merger's catch-up so the periods it touched get their hour/day/week files. Settings are
the collector's; KAFKA_GROUP_ID (default ``fms-backfill``) holds the backfill's own progress and
REALTIME_GROUP_ID (default ``fms-realtime-collector``) names the group whose position is the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from datetime import datetime

from common.errors import CollectorError, ConfigError, FatalError
from common.logs import setup_logging
from domains.base import epoch_micros


def _millis(text: str | None) -> int | None:
    if not text:
        return None
    return epoch_micros(datetime.fromisoformat(text.replace("Z", "+00:00"))) // 1000  # exact, naive = UTC


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m backfill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="since", help="start at the first offset at/after this ISO time")
    parser.add_argument("--until", help="end at the first offset at/after this ISO time (before the collector's)")
    parser.add_argument("--rate", type=float, help="throttle to this many messages per second")
    parser.add_argument("--alarms", action="store_true", help="also publish alarms for history")
    parser.add_argument("--no-merge", action="store_true", help="do not run the merger catch-up afterwards")
    args = parser.parse_args(argv)
    os.environ.setdefault("RUST_BACKTRACE", "0")
    from backfill.runner import Backfill
    from merger.__main__ import config_from_env
    from merger.periods import Grain
    from merger.run import Lease, run
    from settings import collector_settings
    from storage.factory import open_store

    try:
        env = {"HTTP_PORT": "0", "SESSION_TIMEOUT_MS": "45000", **os.environ}
        settings = collector_settings(env, default_group="fms-backfill")
        setup_logging(settings.log_level, settings.log_format)
        store = open_store(settings.storage, create_bucket=settings.storage.backend == "local")
        store.check()
        merger_config = config_from_env(os.environ)
        job = Backfill(
            settings,
            store,
            os.environ.get("REALTIME_GROUP_ID", "fms-realtime-collector"),
            alarms=args.alarms,
            rate=args.rate,
            since_ms=_millis(args.since),
            until_ms=_millis(args.until),
        )
    except (ConfigError, FatalError, ValueError) as exc:
        print(f"backfill: configuration error: {exc}", file=sys.stderr)
        return 2
    except CollectorError as exc:
        print(f"backfill: cannot start: {exc}", file=sys.stderr)
        return 1
    # Short, renewed lease: a second backfill of the same group waits it out; a killed one's expires.
    lease = Lease(
        store, f"backfill-{settings.kafka.kafka_group_id}", float(os.environ.get("BACKFILL_LEASE_SECONDS", "60"))
    )
    job.on_report.append(lease.renew)
    if not lease.acquire():
        print("backfill: another backfill of this group is running; nothing to do", flush=True)
        return 0
    try:
        from collector.app import install_signal_handlers

        install_signal_handlers(job)
        gc.freeze()  # start-up objects live as long as the job: keep them out of every full collection
        job.run()
    finally:
        lease.release()
    if not args.no_merge and not job.stopping.is_set():
        for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
            report = run(store, grain, merger_config)
            print(f"backfill: merged {len(report.merged)} {grain.folder} files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
