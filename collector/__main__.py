"""``python -m collector``: run the realtime collector until SIGTERM/SIGINT.

``python -m collector create-topics`` creates the domain, DLQ and alarm topics instead;
``python -m collector replay --domain D [--reason R] [--since T] [--until T]`` re-sends DLQ records.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

from common.errors import ConfigError, FatalError
from common.logs import setup_logging


def main(argv: list[str] | None = None, role: str = "collector") -> int:
    """Entry point; returns the process exit code. ``role="anomaly"`` runs the standalone engine."""
    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("RUST_BACKTRACE", "0")  # polars panics on corrupt Avro are caught; keep logs short
    if args and args[0] == "create-topics":
        from collector.topics import main as topics_main

        return topics_main(args[1:])
    if args and args[0] == "replay":
        from collector.replay import main as replay_main

        return replay_main(args[1:])
    from collector.app import Collector, install_signal_handlers
    from settings import collector_settings
    from storage.factory import open_store

    try:
        if role == "anomaly":
            env = {**os.environ, "ANOMALY_ENABLED": "true", "WRITE_FILES": "false"}
            settings = collector_settings(env, default_group="fms-anomaly-engine")
        else:
            settings = collector_settings(os.environ)
        setup_logging(settings.log_level, settings.log_format)
        store = open_store(settings.storage, create_bucket=settings.storage.backend == "local")
        store.check()
        collector = Collector(settings, store)
    except (ConfigError, FatalError) as exc:
        print(f"{role}: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. storage unreachable at start
        print(f"{role}: cannot start: {exc}", file=sys.stderr)
        return 1
    install_signal_handlers(collector)
    gc.freeze()  # what start-up made lives as long as the process: keep it out of every full collection
    try:
        collector.run()
    except FatalError as exc:
        logging.getLogger("collector").error("fatal: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
