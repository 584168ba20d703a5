"""Object names: pure, deterministic functions of domain, time and Kafka positions (SPEC §3).

```
<domain>/minute/YYYYMMDD_HHMM_<suffix>.parquet   suffix derived from the Kafka positions inside
<domain>/_dlq/minute/YYYYMMDD_HHMM_<suffix>.parquet   the domain's DLQ records, named the same way
<domain>/hour/YYYYMMDD_HH_HH+1.parquet
<domain>/day/YYYYMMDD.parquet
<domain>/week/YYYYMMDD_YYYYMMDD.parquet
```

Minute names are in UTC. The suffix is derived from the first and last offset of every partition in
the file, so a replay after a crash that re-reads the same messages for that minute writes the same
name and overwrites with identical rows instead of adding a second file, and a name never holds
two different sets of rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MINUTE_DIR = "minute"
_MINUTE_NAME = re.compile(r"^(?P<stamp>\d{8}_\d{4})(?:_(?P<suffix>[A-Za-z0-9-]+))?\.parquet$")


def minute_end(start: datetime) -> datetime:
    """The exclusive end of a minute period."""
    return start + timedelta(minutes=1)


def position_suffix(
    first_offsets: Mapping[tuple[str, int], int], last_offsets: Mapping[tuple[str, int], int] | None = None
) -> str:
    """Deterministic file suffix from the Kafka positions a file holds.

    Readable part: the lowest partition and its first offset; then a short hash of every
    (topic, partition, first, last) so that only a file holding exactly the same positions gets the
    same name: a replay that re-reads the same messages overwrites the file with identical rows, and
    no writer (a restarted one, or a zombie that lost its partitions) can replace a file with
    different rows.
    """
    if not first_offsets:
        raise ValueError("a file needs at least one Kafka position")
    pairs = sorted(first_offsets.items())
    (_, partition), offset = pairs[0]
    last = last_offsets or {}
    digest = hashlib.sha1(
        ",".join(f"{topic}:{p}:{o}" + (f"-{last[(topic, p)]}" if (topic, p) in last else "")
                 for (topic, p), o in pairs).encode(),
        usedforsecurity=False,
    ).hexdigest()[:8]  # fmt: skip
    return f"p{partition}o{offset}-{digest}"


def minute_key(root: str, start: datetime, suffix: str) -> str:
    """Object key of a minute file under ``root`` (a domain, or a domain's ``<domain>/_dlq``)."""
    return f"{root}/{MINUTE_DIR}/{start.astimezone(UTC):%Y%m%d_%H%M}_{suffix}.parquet"


@dataclass(frozen=True)
class MinuteFile:
    """A parsed minute-file key."""

    domain: str
    start: datetime
    suffix: str | None


def parse_minute_key(key: str) -> MinuteFile | None:
    """Parse a minute-file key ``<root>/minute/<name>`` back into its parts (None if it is not one)."""
    root, _, rest = key.rpartition(f"/{MINUTE_DIR}/")
    if not root or "/" in rest:
        return None
    match = _MINUTE_NAME.match(rest)
    if not match:
        return None
    start = datetime.strptime(match["stamp"], "%Y%m%d_%H%M").replace(tzinfo=UTC)
    return MinuteFile(domain=root, start=start, suffix=match["suffix"])
