"""``--from`` / ``--until`` of ``python -m backfill``: ISO times to exact epoch milliseconds."""

from __future__ import annotations

from backfill.__main__ import _millis


def test_times_become_exact_epoch_milliseconds() -> None:
    # float seconds * 1000 reads this one as ...872 ms
    assert _millis("2004-04-06T07:27:15.873Z") == 1_081_236_435_873
    assert _millis("2026-12-05T03:40:48.123Z") == 1_796_442_048_123


def test_naive_times_are_utc_and_offsets_are_honoured() -> None:
    assert _millis("2026-12-05T03:40:48") == _millis("2026-12-05T03:40:48Z") == 1_796_442_048_000
    assert _millis("2026-12-05T12:40:48+09:00") == 1_796_442_048_000
    assert _millis(None) is None and _millis("") is None
