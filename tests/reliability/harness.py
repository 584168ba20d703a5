"""One reliability scenario: a broker, a versioned S3 bucket, collectors as subprocesses, traffic with
known identities, committed offsets sampled throughout, and at the end merges and the oracle.

Scenarios use two domains by default (one exploding an array into rows, one row per message) so a
run stays short; the oracle itself is domain-agnostic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from domains import DOMAINS
from embedded.servers import MotoS3Server
from merger.__main__ import config_from_env
from merger.periods import Grain
from merger.run import pending_periods
from merger.run import run as merge_run
from storage.base import ObjectStore
from storage.factory import StorageConfig, open_store
from tests.conftest import new_bucket
from tests.support.collector_process import ROOT, CollectorProcess
from tests.support.kafka import Produced, committed_offsets
from tests.support.oracle import (
    CommitSampler,
    OracleReport,
    S3VersionedView,
    StorageView,
    check,
    enable_versioning,
    read_dlq,
)
from trafficgen import FAULT_KINDS, GeneratedMessage, TrafficGenerator

GROUP = "fms-realtime-collector"
SCENARIO_DOMAINS = ("equipment_metrics", "robot_status")
FAULT_RATE = 0.02  # of every kind together (duplicates included: the oracle knows they collapse)


def chaos_trials(default: int = 3) -> int:
    """``CHAOS_TRIALS`` from the environment (the long hand run sets it), else ``default``."""
    return int(os.environ.get("CHAOS_TRIALS", str(default)))


def past_start(days: float = 9.0) -> datetime:
    """An hour's start + 5 min, ``days`` ago: complete hours, days and a week for the merger today."""
    at = datetime.now(UTC) - timedelta(days=days)
    return at.replace(minute=5, second=0, microsecond=0)


def traffic(
    seed: int, start: datetime | None = None, domains: Sequence[str] = SCENARIO_DOMAINS,
    fault_rate: float = FAULT_RATE, step: timedelta | None = None,
) -> TrafficGenerator:  # fmt: skip
    """A deterministic generator of the scenario's domains with every fault kind at ``fault_rate`` in total."""
    rates = {kind: fault_rate / len(FAULT_KINDS) for kind in FAULT_KINDS} if fault_rate else {}
    return TrafficGenerator(
        seed=seed, domains=domains, formats=("avro", "json", "avro-confluent"), fault_rates=rates,
        start=start or past_start(), step=step,
    )  # fmt: skip


class TrackedProducer:
    """One idempotent producer that records where each message landed (thread-safe, shared list)."""

    def __init__(self, bootstrap: str, sink: list[Produced]) -> None:
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True,
            "message.timeout.ms": 120_000,
        })  # fmt: skip
        self.sink = sink
        self.unplaced: list[tuple[GeneratedMessage, int]] = []  # delivered, but the broker gave no offset
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def send(self, messages: Iterable[GeneratedMessage], partition: int | None = None, timestamps: str = "recent"
             ) -> None:  # fmt: skip
        """Queue messages (keyed by entity, or to ``partition``); delivery reports fill the sink.

        ``timestamps`` sets the Kafka timestamps: ``"recent"`` gives a message whose event time is more
        than 20 minutes old a timestamp 20 minutes in the past (inside the topic's retention), so the
        collector files what it cannot decode under a minute that is already over, as it does with the
        rows of such messages, instead of holding the partition's commit until the current minute ends;
        ``"event"``: the event time itself; ``"now"``: the producer's clock.
        """
        now_ms = int(time.time() * 1000)
        for m in messages:
            event_ms = int(m.event_time.timestamp() * 1000)
            timestamp_ms = {"recent": now_ms - 20 * 60_000 if event_ms < now_ms - 20 * 60_000 else None,
                            "event": event_ms, "now": None}[timestamps]  # fmt: skip

            def callback(err: KafkaError | None, msg: Message, m: GeneratedMessage = m) -> None:
                if err is not None:
                    self.errors.append(str(err))
                    return
                with self._lock:
                    if msg.offset() is None or msg.offset() < 0:  # type: ignore[operator]
                        # A retried batch the broker already had (idempotent de-duplication after a
                        # broker restart) is acknowledged without its offset: found later by content.
                        self.unplaced.append((m, msg.partition()))  # type: ignore[arg-type]
                    else:
                        self.sink.append(Produced(m, msg.partition(), msg.offset()))  # type: ignore[arg-type]

            extra: dict[str, object] = {}
            if partition is not None:
                extra["partition"] = partition
            if timestamp_ms is not None:
                extra["timestamp"] = timestamp_ms
            while True:
                try:
                    self.producer.produce(m.topic, key=m.key, value=m.value, on_delivery=callback, **extra)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)

    def flush(self, timeout: float = 120.0) -> None:
        """Wait for every delivery report; fail on any error."""
        remaining = self.producer.flush(timeout)
        assert remaining == 0 and not self.errors, f"produce failed: {remaining} undelivered, {self.errors[:3]}"


class BackgroundTraffic:
    """Produces ``rate`` messages per second from a generator in a thread until stopped."""

    def __init__(self, producer: TrackedProducer, generator: TrafficGenerator, rate: float, chunk: int = 100) -> None:
        self.producer, self.generator, self.rate, self.chunk = producer, generator, rate, chunk
        self.sent = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="background-traffic", daemon=True)

    def start(self) -> BackgroundTraffic:
        """Start producing."""
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop, wait for delivery reports; returns how many were sent."""
        self._stop.set()
        self._thread.join(60)
        self.producer.flush()
        return self.sent

    def pause(self) -> None:
        """Stop producing for a while; returns once everything sent so far is acknowledged."""
        self._idle.clear()
        self._paused.set()
        self._idle.wait(30)
        self.producer.flush()

    def resume(self) -> None:
        """Produce again (the rate counts from now; the pause is not made up)."""
        self._paused.clear()

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set():
                self._idle.set()
                pause_started = time.monotonic()
                while self._paused.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                started += time.monotonic() - pause_started
                continue
            due = int((time.monotonic() - started) * self.rate) - self.sent
            if due <= 0:
                self._stop.wait(0.02)
                continue
            n = min(due, self.chunk)
            self.producer.send(self.generator.generate(n))
            self.sent += n


class Scenario:
    """Everything one reliability test runs against; :meth:`close` stops all it started."""

    def __init__(
        self, bootstrap: str, moto: MotoS3Server, tmp_path: Path, domains: Sequence[str] = SCENARIO_DOMAINS,
        endpoint: str | None = None, group: str = GROUP,
    ) -> None:  # fmt: skip
        self.bootstrap, self.moto, self.tmp_path, self.domains, self.group = bootstrap, moto, tmp_path, domains, group
        self.bucket = new_bucket()
        enable_versioning(moto.endpoint, moto.access_key, moto.secret_key, self.bucket)
        self.config = StorageConfig(backend="minio", bucket=self.bucket, minio_endpoint=moto.endpoint,
                                    minio_access_key=moto.access_key, minio_secret_key=moto.secret_key)  # fmt: skip
        self.store: ObjectStore = open_store(self.config)
        self.storage_env = {
            "STORAGE_BACKEND": "minio", "MINIO_ENDPOINT": endpoint or moto.endpoint, "MINIO_BUCKET": self.bucket,
            "MINIO_ACCESS_KEY": moto.access_key, "MINIO_SECRET_KEY": moto.secret_key, "MINIO_SECURE": "false",
        }  # fmt: skip
        self.topics = [DOMAINS[d].topic.name for d in domains]
        self.env = {"KAFKA_BROKERS": bootstrap, "KAFKA_TOPIC": ",".join(self.topics), "KAFKA_GROUP_ID": group,
                    **self.storage_env}  # fmt: skip
        self.produced: list[Produced] = []
        self.producer = TrackedProducer(bootstrap, self.produced)
        self.processes: list[CollectorProcess] = []
        self.supervisors: list[Supervisor] = []
        self.sampler = CommitSampler(bootstrap, group, self.topics).start()
        self.report: OracleReport | None = None
        self.started = time.monotonic()

    # -- running things ----------------------------------------------------------------------

    def collector(self, name: str = "collector", module: str = "collector", **env: str) -> CollectorProcess:
        """Start ``python -m collector`` (writer id = ``name``) with the scenario's environment."""
        process = CollectorProcess({**self.env, "HOSTNAME": name, **env}, self.tmp_path, name=name, module=module)
        self.processes.append(process.start())
        return process

    def produce(self, messages: Sequence[GeneratedMessage], partition: int | None = None) -> None:
        """Produce and wait for the delivery reports."""
        self.producer.send(messages, partition=partition)
        self.producer.flush()

    def ends(self) -> dict[tuple[str, int], int]:
        """Offset after the last produced message, per partition."""
        out: dict[tuple[str, int], int] = {}
        for p in self.produced:
            key = (p.message.topic, p.partition)
            out[key] = max(out.get(key, 0), p.offset + 1)
        return out

    def committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets for the partitions produced to."""
        return committed_offsets(self.bootstrap, self.group, self.ends())

    def caught_up(self) -> bool:
        """Every produced offset is below the group's committed offset."""
        ends = self.ends()
        committed = self.committed()
        return all(committed.get(tp, -1) >= end for tp, end in ends.items())

    def wait_caught_up(self, process: CollectorProcess | None, timeout: float = 120.0) -> None:
        """Wait until the group committed everything produced (``process`` must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.caught_up():
                return
            if process is not None and process.proc is not None and process.proc.poll() is not None:
                raise AssertionError(f"{process.log_path.name} exited ({process.proc.returncode}):\n{process.tail()}")
            time.sleep(0.5)
        ends, committed = self.ends(), self.committed()
        behind = {
            f"{t}[{p}]": (committed.get((t, p)), e) for (t, p), e in ends.items() if committed.get((t, p), -1) < e
        }
        tail = process.tail() if process else ""
        raise AssertionError(f"not caught up after {timeout:.0f}s; (committed, end) behind: {behind}\n{tail}")

    def run_module(self, module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
                   name: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``python -m module args`` to completion with the scenario's environment."""
        full = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", "HTTP_PORT": "0",
                "ANOMALY_ENABLED": "false", **self.env, **(env or {})}  # fmt: skip
        log = self.tmp_path / f"{name or module}.log"
        done = subprocess.run([sys.executable, "-m", module, *args], env=full, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        with log.open("a") as f:
            f.write(done.stdout + done.stderr)
        return done

    def start_module(self, module: str, *args: str, env: dict[str, str] | None = None,
                     name: str | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start ``python -m module args`` in the background (output to a log in tmp_path)."""
        full = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", "HTTP_PORT": "0",
                "ANOMALY_ENABLED": "false", **self.env, **(env or {})}  # fmt: skip
        log = (self.tmp_path / f"{name or module}.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", module, *args], env=full, cwd=ROOT, stdout=log, stderr=log)

    def merge(self, now: datetime | None = None, env: dict[str, str] | None = None) -> int:
        """Catch-up merges hour, day, week (in process, the merger's own code); returns files merged."""
        config = config_from_env({**os.environ, **(env or {})})
        merged = 0
        for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
            report = merge_run(self.store, grain, config, now=now, domains=list(self.domains))
            assert not report.skipped, f"the {grain.folder} merge skipped: a lease is still held"
            merged += len(report.merged)
        return merged

    def pending(self, env: dict[str, str] | None = None) -> dict[str, list[str]]:
        """Periods a merger run would still merge, per grain and domain (empty lists: all merged)."""
        config = config_from_env({**os.environ, **(env or {})})
        now = datetime.now(UTC)
        return {
            f"{grain.folder}/{domain}": [p.name for p in periods]
            for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK)
            for domain, periods in pending_periods(self.store, grain, config, now).items()
            if domain in self.domains
        }

    def run_python(self, code: str, env: dict[str, str] | None = None, name: str = "python",
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``python -c code`` with the scenario's environment (a separate process, e.g. in another zone)."""
        full = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", **self.env, **(env or {})}
        done = subprocess.run([sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        with (self.tmp_path / f"{name}.log").open("a") as f:
            f.write(done.stdout + done.stderr)
        return done

    # -- the end -------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """SIGTERM every collector still running (SIGKILL if it does not stop)."""
        for process in self.processes:
            if process.proc is not None and process.proc.poll() is None:
                try:
                    process.terminate(timeout=90)
                except subprocess.TimeoutExpired:
                    process.kill()

    def place_unplaced(self) -> int:
        """Find the offsets of messages acknowledged without one, by reading their partitions back."""
        unplaced = self.producer.unplaced
        if not unplaced:
            return 0
        claimed = {(p.message.topic, p.partition, p.offset) for p in self.produced}
        wanted = {(m.topic, partition) for m, partition in unplaced}
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "harness-placer",
                             "enable.auto.commit": False})  # fmt: skip
        found: dict[tuple[str, int, bytes | None, bytes | None], list[int]] = defaultdict(list)
        try:
            consumer.assign([TopicPartition(t, p, 0) for t, p in wanted])
            last = time.monotonic()
            while time.monotonic() - last < 3.0:
                for record in consumer.consume(1000, 0.5):
                    if record.error() is None:
                        last = time.monotonic()
                        position = (record.topic(), record.partition(), record.offset())
                        if position not in claimed:
                            found[(record.topic(), record.partition(), record.key(), record.value())].append(
                                record.offset()  # type: ignore[arg-type]
                            )
        finally:
            consumer.close()
        missing = []
        for m, partition in unplaced:
            offsets = found.get((m.topic, partition, m.key, m.value))
            if not offsets:
                missing.append(f"{m.msg_id} ({m.topic}[{partition}])")
                continue
            self.produced.append(Produced(m, partition, offsets.pop(0)))
        placed = len(unplaced) - len(missing)
        assert not missing, (
            f"the broker acknowledged {len(missing)} of {len(unplaced)} messages without an offset and does not hold "
            f"them: {missing[:5]}"
        )
        unplaced.clear()
        return placed

    def finish(
        self, *, merge: bool = True, view: StorageView | None = None, expect_merged: bool = True,
        env: dict[str, str] | None = None, **kwargs: object,
    ) -> OracleReport:  # fmt: skip
        """Stop collectors, merge, read the DLQ, run the oracle, print its summary and fail on a violation."""
        self.stop_all()
        samples = self.sampler.stop()
        placed = self.place_unplaced()
        if placed:
            print(f"\n{placed} messages were acknowledged without an offset and found in their partition")
        merged = self.merge(env=env) if merge else 0
        if merge and expect_merged:
            assert merged > 0, "the merger merged nothing: the scenario's data should fill complete periods"
        dlq = read_dlq(self.bootstrap, self.domains)
        report = check(
            self.produced, view or S3VersionedView(self.moto.endpoint, self.moto.access_key, self.moto.secret_key,
                                                   self.bucket),
            dlq=dlq, samples=samples, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        self.report = report
        print(f"\n{report.summary()} [{time.monotonic() - self.started:.0f} s]")
        report.assert_ok()
        return report

    def close(self) -> None:
        """Kill whatever is left (SIGCONT first, for stopped processes)."""
        for supervisor in self.supervisors:
            supervisor.stop()
        if self.producer.producer is not None:
            self.producer.producer.flush(0)
            self.producer.producer = None  # type: ignore[assignment]  # handle freed: no reconnect threads left
        for process in self.processes:
            if process.proc is not None and process.proc.poll() is None:
                os.kill(process.proc.pid, signal.SIGCONT)
                process.kill()
        self.sampler.stop()


class Supervisor:
    """Keeps one collector running as Kubernetes would: restarts it (after ``backoff`` s) whenever it exits."""

    def __init__(self, scenario: Scenario, name: str = "supervised", backoff: float = 1.0, **env: str) -> None:
        self.scenario, self.name, self.backoff, self.env = scenario, name, backoff, env
        self.exits: list[int] = []
        self.current = scenario.collector(f"{name}0", **env)
        scenario.supervisors.append(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            proc = self.current.proc
            if proc is not None and proc.poll() is not None:
                self.exits.append(proc.returncode)
                if self._stop.wait(self.backoff):
                    return
                self.current = self.scenario.collector(f"{self.name}{len(self.exits)}", **self.env)
            self._stop.wait(0.2)

    def stop(self) -> CollectorProcess:
        """Stop restarting; returns the collector that runs now (left running)."""
        self._stop.set()
        self._thread.join(10)
        return self.current


def with_message(message: GeneratedMessage, **changes: object) -> GeneratedMessage:
    """A copy of a generated message with fields replaced."""
    return replace(message, **changes)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll until ``condition()``; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
