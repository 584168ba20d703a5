"""Time grains as a small ordered model: minute < hour < day < week.

One function each for "period of a timestamp", "file name of a period" and "is it complete".
Minute and hour periods are UTC (an hour is the same instant range in every zone that matters
here, and UTC names never repeat or skip across DST). Day and week boundaries are local midnights
in ``PARTITION_TIMEZONE`` (DST-safe: a local day is 23, 24 or 25 hours long); weeks start on
``WEEK_START`` (Sunday by default, seed example 20250601_20250607).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


class Grain(enum.IntEnum):
    """Ordered file levels."""

    MINUTE = 0
    HOUR = 1
    DAY = 2
    WEEK = 3

    @property
    def folder(self) -> str:
        """Folder name under ``<bucket>/<domain>/``."""
        return self.name.lower()

    def finer(self) -> Grain:
        """The level merged into this one."""
        return Grain(self - 1)


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Calendar:
    """Where day and week boundaries fall."""

    tz: ZoneInfo = ZoneInfo("UTC")
    week_start: int = 6  # datetime.weekday() of the first day: 6 = Sunday

    @classmethod
    def of(cls, timezone: str = "UTC", week_start: str = "sunday") -> Calendar:
        """Build from setting values (raises ValueError on unknown names)."""
        if week_start.lower() not in WEEKDAYS:
            raise ValueError(f"expected one of {', '.join(WEEKDAYS)}, got {week_start!r}")
        return cls(tz=ZoneInfo(timezone), week_start=WEEKDAYS.index(week_start.lower()))

    def midnight(self, day: date) -> datetime:
        """The UTC instant of local midnight starting ``day`` (DST-safe)."""
        return datetime.combine(day, time(0), tzinfo=self.tz).astimezone(UTC)

    def local_date(self, ts: datetime) -> date:
        """The local calendar date of an instant."""
        return ts.astimezone(self.tz).date()


@dataclass(frozen=True, order=True)
class Period:
    """A half-open UTC instant range ``[start, end)`` of one grain, with its file name."""

    grain: Grain
    start: datetime
    end: datetime
    name: str

    def contains(self, other: Period) -> bool:
        """Whether ``other`` lies entirely inside this period."""
        return self.start <= other.start and other.end <= self.end


def period_of(ts: datetime, grain: Grain, calendar: Calendar) -> Period:
    """The period of ``grain`` that contains instant ``ts``."""
    ts = ts.astimezone(UTC)
    if grain is Grain.MINUTE:
        start = ts.replace(second=0, microsecond=0)
        return Period(grain, start, start + timedelta(minutes=1), f"{start:%Y%m%d_%H%M}")
    if grain is Grain.HOUR:
        start = ts.replace(minute=0, second=0, microsecond=0)
        return Period(grain, start, start + timedelta(hours=1), f"{start:%Y%m%d_%H}_{start.hour + 1:02d}")
    day = calendar.local_date(ts)
    if grain is Grain.DAY:
        return Period(grain, calendar.midnight(day), calendar.midnight(day + timedelta(days=1)), f"{day:%Y%m%d}")
    first = day - timedelta(days=(day.weekday() - calendar.week_start) % 7)
    last = first + timedelta(days=6)
    return Period(
        grain, calendar.midnight(first), calendar.midnight(last + timedelta(days=1)), f"{first:%Y%m%d}_{last:%Y%m%d}"
    )


_NAMES = {
    Grain.MINUTE: re.compile(r"^(\d{8}_\d{4})(?:_[A-Za-z0-9-]+)?$"),
    Grain.HOUR: re.compile(r"^(\d{8})_(\d{2})_(\d{2})$"),
    Grain.DAY: re.compile(r"^(\d{8})$"),
    Grain.WEEK: re.compile(r"^(\d{8})_(\d{8})$"),
}


def parse_name(name: str, grain: Grain, calendar: Calendar) -> Period | None:
    """The period a file stem names (minute stems may carry a suffix); None if it names none."""
    match = _NAMES[grain].match(name)
    if not match:
        return None
    if grain is Grain.MINUTE:
        ts = datetime.strptime(match[1], "%Y%m%d_%H%M").replace(tzinfo=UTC)
    elif grain is Grain.HOUR:
        ts = datetime.strptime(f"{match[1]}{match[2]}", "%Y%m%d%H").replace(tzinfo=UTC)
    else:
        day = datetime.strptime(match[1], "%Y%m%d").date()
        ts = calendar.midnight(day)
    period = period_of(ts, grain, calendar)
    return period if grain is Grain.MINUTE or period.name == name else None


def file_key(domain: str, period: Period) -> str:
    """Object key of a merged (hour/day/week) file."""
    return f"{domain}/{period.grain.folder}/{period.name}.parquet"


def is_complete(period: Period, now: datetime, grace: timedelta) -> bool:
    """A period is complete once the clock is past its end plus the grace for late minute files."""
    return now >= period.end + grace


def children(period: Period, calendar: Calendar) -> list[Period]:
    """The next-finer periods lying entirely inside ``period`` (hours of a day, days of a week...)."""
    finer = period.grain.finer()
    out: list[Period] = []
    cursor = period.start
    while cursor < period.end:
        child = period_of(cursor, finer, calendar)
        if period.contains(child):
            out.append(child)
        cursor = child.end
    return out
