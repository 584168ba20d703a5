"""The backfill: the collector's own pipeline over a fixed range of historical offsets.

For each domain topic partition it reads, with explicit assignment (never joining or disturbing
the realtime group), from the earliest offset (or the first at/after ``--from``) up to an end fixed
at the first start and kept in storage: the realtime group's recorded start boundary, else its
committed offset, else the high watermark. Decoding, the anomaly engine (alarms off unless asked),
the DLQ and minute files are the collector's code; file names derive from Kafka positions.
Progress is committed to the backfill's own group, so a killed Job resumes where it was.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from collector import metrics
from collector.app import Collector
from common.errors import FatalError
from domains import domain_for_topic
from settings import CollectorSettings
from storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger("backfill")

TP = tuple[str, int]


@dataclass
class BackfillPlan:
    """Offsets to load per partition: ``[start, end)``."""

    starts: dict[TP, int]
    ends: dict[TP, int]
    created_at: str

    def to_json(self) -> bytes:
        """Serialized form (kept in storage so a restart uses the same end)."""
        return json.dumps(
            {
                "created_at": self.created_at,
                "partitions": [
                    {"topic": t, "partition": p, "start": self.starts[(t, p)], "end": e}
                    for (t, p), e in sorted(self.ends.items())
                ],
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BackfillPlan:
        """Parse a stored plan."""
        raw = json.loads(data)
        starts = {(r["topic"], r["partition"]): r["start"] for r in raw["partitions"]}
        ends = {(r["topic"], r["partition"]): r["end"] for r in raw["partitions"]}
        return cls(starts, ends, raw["created_at"])

    @property
    def total(self) -> int:
        """Messages in the plan."""
        return sum(max(0, e - self.starts[tp]) for tp, e in self.ends.items())


@dataclass
class Progress:
    """Counts for the progress lines and the final summary."""

    started: float = field(default_factory=time.monotonic)
    done: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)


def make_plan(
    consumer: Consumer,
    store: ObjectStore,
    topics: list[str],
    realtime_group: str,
    client_config: dict[str, object],
    since_ms: int | None,
    until_ms: int | None,
    now: datetime,
) -> BackfillPlan:
    """Fix the offsets to load, from the broker's watermarks and the realtime group's position."""
    metadata = consumer.list_topics(timeout=10)
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(metadata.topics[t].partitions)]
    realtime = Consumer({**client_config, "group.id": realtime_group, "enable.auto.commit": False})
    try:
        committed = {(tp.topic, tp.partition): tp.offset for tp in realtime.committed(partitions, timeout=10)}
    finally:
        realtime.close()
    starts: dict[TP, int] = {}
    ends: dict[TP, int] = {}
    for tp in partitions:
        key = (tp.topic, tp.partition)
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        end = high
        try:
            end = int(store.get(f"_backfill/boundary/{realtime_group}/{tp.topic}/{tp.partition}"))
        except ObjectNotFound:
            if committed.get(key, -1) >= 0:
                end = committed[key]
        starts[key], ends[key] = low, min(end, high)
    for bound, target in ((since_ms, starts), (until_ms, ends)):
        if bound is None:
            continue
        # Tansu answers timestamp lookups with offset 0 (TESTING.md): a real Kafka gives the first
        # offset at/after the time. -1 means "after the last message".
        found = consumer.offsets_for_times([TopicPartition(t, p, bound) for t, p in target], timeout=10)
        for tp in found:
            key = (tp.topic, tp.partition)
            offset = ends[key] if tp.offset < 0 else tp.offset
            target[key] = max(starts[key], min(ends[key], offset)) if target is ends else min(ends[key], offset)
    return BackfillPlan(starts, ends, now.isoformat())


class Backfill(Collector):
    """A collector on a fixed, explicitly assigned offset range that stops by itself at the end."""

    def __init__(
        self,
        settings: CollectorSettings,
        store: ObjectStore,
        realtime_group: str,
        alarms: bool = False,
        rate: float | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> None:
        super().__init__(settings, store)
        self.flush_when_due = False  # history: write by size and at the end, not minute by minute
        self.publish_alarms = alarms
        self.sweep_enabled = False
        self.report_progress = False  # completeness follows the realtime group's progress only
        self.group_member = False  # explicit assignment: no group can move its partitions
        self.realtime_group = realtime_group
        self.rate = rate
        self.since_ms, self.until_ms = since_ms, until_ms
        self.plan: BackfillPlan | None = None
        self.position: dict[TP, int] = {}
        self.progress = Progress()
        self._next_report = 0.0
        self._throttle_start = time.monotonic()
        self._throttled = 0
        self.on_report: list[object] = []  # callables run with each progress line (lease renewal)

    @property
    def plan_key(self) -> str:
        """Where the plan is kept."""
        return f"_backfill/{self.settings.kafka.kafka_group_id}/plan.json"

    @property
    def done_key(self) -> str:
        """Written once everything planned is stored: until then the merger writes no completeness markers."""
        return f"_backfill/{self.settings.kafka.kafka_group_id}/done.json"

    def load_plan(self) -> BackfillPlan:
        """The stored plan, or a new one (stored before any work starts)."""
        try:
            return BackfillPlan.from_json(self.store.get(self.plan_key))
        except ObjectNotFound:
            pass
        plan = make_plan(
            self.consumer,
            self.store,
            list(self.settings.kafka.kafka_topic),
            self.realtime_group,
            self.settings.kafka.client_config(),
            self.since_ms,
            self.until_ms,
            self.clock(),
        )
        self.store.put(self.plan_key, plan.to_json())
        return plan

    def run(self) -> None:
        """Load the plan's range, then flush, commit and stop."""
        self.plan = plan = self.load_plan()
        tps = [TopicPartition(t, p) for (t, p) in plan.ends]
        try:
            committed = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(tps, timeout=10)}
        except KafkaException as exc:
            raise FatalError(f"cannot read the backfill group's progress: {exc}") from exc
        assignment = []
        for key, end in plan.ends.items():
            start = max(plan.starts[key], committed.get(key, -1))
            domain = domain_for_topic(key[0]).name
            self.progress.total[domain] += max(0, end - plan.starts[key])
            self.progress.done[domain] += max(0, start - plan.starts[key])
            self.position[key] = start
            if start < end:
                assignment.append(TopicPartition(key[0], key[1], start))
        log.info(
            "backfill plan",
            extra={"messages": plan.total, "remaining_partitions": len(assignment), "plan": self.plan_key},
        )
        self.consumer.assign(assignment)
        self.health.assigned = True
        try:
            idle_since = time.monotonic()
            ended = False
            while not self.stopping.is_set() and not (ended := self.finished()):
                before = dict(self.position)
                self.step()
                self.report()
                if self.position != before:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 30 and self._caught_up():
                    log.warning(
                        "no more messages below the planned end; finishing",
                        extra={"positions": {f"{t}[{p}]": o for (t, p), o in self.position.items()}},
                    )
                    ended = True
                    break
            self.shutdown()
            if ended and not len(self.buffer):
                self.store.put(self.done_key, json.dumps({"finished_at": self.clock().isoformat()}).encode())
        finally:
            self.consumer.close()
            self.dlq.close(10)
        self.report(final=True)

    def _caught_up(self) -> bool:
        """Every unfinished partition is at its high watermark (the planned end is not reachable)."""
        assert self.plan is not None
        for (topic, partition), end in self.plan.ends.items():
            if self.position.get((topic, partition), 0) < end:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if self.position.get((topic, partition), 0) < high:
                    return False
        return True

    def finished(self) -> bool:
        """Every partition reached its end."""
        assert self.plan is not None
        return all(self.position.get(key, 0) >= end for key, end in self.plan.ends.items())

    def process(self, messages: list[Message]) -> None:
        """Keep only messages inside the plan; pause partitions that reached their end; throttle."""
        assert self.plan is not None
        inside: list[Message] = []
        reached: list[TopicPartition] = []
        for message in messages:
            if message.error() is not None:
                inside.append(message)
                continue
            key = (message.topic() or "", message.partition() or 0)
            end = self.plan.ends.get(key, 0)
            offset = message.offset() or 0
            if offset < end:
                inside.append(message)
                self.progress.done[domain_for_topic(key[0]).name] += 1
            # Past the end (or at it) the partition is done, even across offset gaps.
            self.position[key] = max(self.position.get(key, 0), min(offset + 1, end))
            if offset + 1 >= end:
                reached.append(TopicPartition(key[0], key[1]))
        if reached:
            self.consumer.pause(reached)
        super().process(inside)
        self._throttle(len(inside))

    def _throttle(self, n: int) -> None:
        if not self.rate:
            return
        self._throttled += n
        ahead = self._throttled / self.rate - (time.monotonic() - self._throttle_start)
        if ahead > 0:
            time.sleep(min(ahead, 5.0))

    def report(self, final: bool = False) -> None:
        """A progress line per domain every few seconds; a summary at the end."""
        if not final and time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + 5
        for callback in self.on_report:
            callback()  # type: ignore[operator]
        elapsed = max(1e-6, time.monotonic() - self.progress.started)
        for domain in sorted(self.progress.total):
            done, total = self.progress.done[domain], self.progress.total[domain]
            rate = done / elapsed
            eta = (total - done) / rate if rate > 0 else float("inf")
            print(f"backfill {domain:<24} {done:>10,}/{total:<10,} {rate:>9,.0f} msg/s  ETA {eta:>6.0f} s", flush=True)
        if final:
            summary = {
                "messages": sum(self.progress.done.values()),
                "rows": _total(metrics.ROWS_OUT),
                "files": _total(metrics.FILES_WRITTEN),
                "dlq": _by_label(metrics.DLQ_RECORDS, "reason"),
                "seconds": round(elapsed, 1),
            }
            print("backfill summary: " + json.dumps(summary), flush=True)


def _total(counter: metrics.Counter) -> int:
    return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))


def _by_label(counter: metrics.Counter, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in counter.collect():
        for s in m.samples:
            if s.name.endswith("_total"):
                out[s.labels[label]] = out.get(s.labels[label], 0) + int(s.value)
    return out
