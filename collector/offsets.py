"""Which offsets may be committed: never past a row or DLQ record that is not yet durable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

TopicPartition = tuple[str, int]


class OffsetTracker:
    """Tracks consumed positions and DLQ records awaiting broker acknowledgement per partition."""

    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}
        self._dlq_pending: dict[TopicPartition, Counter[int]] = {}
        self._committed: dict[TopicPartition, int] = {}

    def consumed(self, tp: TopicPartition, offset: int) -> None:
        """A message at ``offset`` was consumed (and is now buffered, rejected or skipped)."""
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def dlq_sent(self, tp: TopicPartition, offset: int) -> None:
        """A DLQ record for the message at ``offset`` is in flight."""
        pending = self._dlq_pending.get(tp)
        if pending is None:
            pending = self._dlq_pending[tp] = Counter()
        pending[offset] += 1

    def dlq_acknowledged(self, tp: TopicPartition, offset: int) -> None:
        """The broker acknowledged the DLQ record for ``offset``."""
        pending = self._dlq_pending.get(tp)
        if pending is None:
            return
        pending[offset] -= 1
        if pending[offset] <= 0:
            del pending[offset]

    def dlq_in_flight(self) -> int:
        """Number of DLQ records not yet acknowledged."""
        return sum(sum(c.values()) for c in self._dlq_pending.values())

    def committable(self, held: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets to commit now: for each partition, the lowest of the next offset to consume,
        the first offset still buffered in memory (``held``) and the first unacknowledged DLQ
        record. Only partitions whose position moved since the last commit are returned."""
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            candidates = [nxt]
            if tp in held:
                candidates.append(held[tp])
            pending = self._dlq_pending.get(tp)
            if pending:
                candidates.append(min(pending))
            safe = min(candidates)
            if safe > self._committed.get(tp, -1):
                out[tp] = safe
        return out

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record a successful commit."""
        self._committed.update(offsets)

    def committed_offset(self, tp: TopicPartition) -> int | None:
        """The last offset committed for ``tp`` by this process (None if none)."""
        return self._committed.get(tp)

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The offset after the last one consumed from ``tp`` (None before the first)."""
        return self._next.get(tp)

    def consumed_any(self, tp: TopicPartition) -> bool:
        """Whether anything of ``tp`` was consumed since it was assigned."""
        return tp in self._next

    def partitions(self) -> set[TopicPartition]:
        """Partitions with consumed positions."""
        return set(self._next)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the state of partitions that were revoked or lost."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._dlq_pending.pop(tp, None)
            self._committed.pop(tp, None)


class EventTimeTracker:
    """Per partition, the newest event time consumed up to each offset, so that once an offset is
    committed the newest event time that is durable below it is known (the partition's watermark)."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, list[tuple[int, int]]] = {}  # (last offset, newest us so far)
        self._durable: dict[TopicPartition, int] = {}

    def observe(self, tp: TopicPartition, last_offset: int, newest_us: int | None) -> None:
        """Messages up to ``last_offset`` were consumed; ``newest_us`` is their newest event time."""
        pending = self._pending.setdefault(tp, [])
        previous = pending[-1][1] if pending else self._durable.get(tp, -1)
        pending.append((last_offset, max(previous, newest_us if newest_us is not None else -1)))

    def durable(self, tp: TopicPartition, committed: int) -> int | None:
        """Newest event time (µs) among messages below the ``committed`` offset, None if none seen."""
        pending = self._pending.get(tp, [])
        done = 0
        while done < len(pending) and pending[done][0] < committed:
            self._durable[tp] = max(self._durable.get(tp, -1), pending[done][1])
            done += 1
        if done:
            del pending[:done]
        newest = self._durable.get(tp, -1)
        return newest if newest >= 0 else None

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop revoked or lost partitions."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._durable.pop(tp, None)


class PendingAgeTracker:
    """Per partition, the Kafka timestamps of consumed batches, to tell how old the oldest message not
    yet committed is (and so how close unstored data is to the topic's retention)."""

    def __init__(self) -> None:
        self._spans: dict[TopicPartition, list[tuple[int, int, int]]] = {}  # (first, last, oldest ms)
        self._durable: dict[TopicPartition, int] = {}  # oldest ms of the last committed batch

    def observe(self, tp: TopicPartition, first: int, last: int, oldest_ms: int) -> None:
        """Messages ``first``..``last`` were consumed; the oldest carries Kafka time ``oldest_ms``."""
        spans = self._spans.setdefault(tp, [])
        spans.append((first, last, oldest_ms))
        if len(spans) > 1000:  # bound memory: merge the two oldest spans (keeps the oldest time)
            (f, _, a), (_, l2, b) = spans[0], spans[1]
            spans[0:2] = [(f, l2, min(a, b))]

    def oldest(self, tp: TopicPartition, committed: int | None, behind: bool) -> int | None:
        """Kafka time (ms) of the oldest consumed message at or after ``committed``; when none is pending
        but the consumer is ``behind``, that of the last committed batch (the unread ones are younger)."""
        spans = self._spans.get(tp, [])
        if committed is not None:
            while spans and spans[0][1] < committed:
                self._durable[tp] = spans.pop(0)[2]
        if spans:
            return min(s[2] for s in spans)
        return self._durable.get(tp) if behind else None

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop revoked or lost partitions."""
        for tp in partitions:
            self._spans.pop(tp, None)
            self._durable.pop(tp, None)
