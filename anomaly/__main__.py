"""``python -m anomaly``: the anomaly engine as a standalone worker (SPEC §5).

The collector's consumer loop with Parquet writing off: every message is decoded and evaluated,
alarms go to ``iot.alarm_log`` and flagged/rejected records to the DLQ topics, and offsets are
committed once those are acknowledged. Its own consumer group (``fms-anomaly-engine`` unless
KAFKA_GROUP_ID says otherwise); the same settings as the collector otherwise.
"""

from __future__ import annotations

import sys

from collector.__main__ import main

if __name__ == "__main__":
    sys.exit(main(role="anomaly"))
