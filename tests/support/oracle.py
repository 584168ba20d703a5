"""The no-loss / no-duplicate oracle: what a scenario produced against what storage and the DLQ hold.

Give it the produced messages (each with its own identity: topic, partition and offset from the
producer's delivery report, its key and bytes, and the generator's id and expectation), a view of
the storage (:class:`StoreView` for the latest objects of any backend, :class:`S3VersionedView` for
every version of every object in a versioned S3 bucket) and the DLQ topics, plus the committed
offsets sampled during the run (:class:`CommitSampler`). :func:`check` verifies:

1. **accounting** -- every source offset is in exactly one of {fact rows, rejected DLQ records},
   with the right number of rows (``expected_rows``) or the right reason, and the row's entity /
   the DLQ record's bytes match the produced message; nothing is stored that was never produced;
2. **merged duplicates** -- no (topic, partition, offset, item_index) twice among the hour, day or
   week files of one grain, no de-dup key twice in one merged file, and each merged file holds
   exactly the de-duplicated rows of its period (a merged file that lost rows is a loss);
3. **readable** -- every visible object is a readable Parquet file whose row count matches its
   manifest (``fms.manifest`` in a minute file's metadata, ``<root>/_manifests/<grain>/<name>.json``
   for a merged file); no merged file without its manifest, no manifest without its file;
4. **no temporaries** -- nothing but final names under the reader-visible folders (and, for the
   local backend, no in-flight files on disk);
5. **commit safety** -- every offset below a sampled committed offset is durable, at the time of
   the sample when the view has history (an object version holding it was written before), else in
   the final state; a partition's committed offset never moves backwards;
6. **stable keys** -- every version of a minute-file key holds the same positions; a rewritten
   merged file keeps every row of its previous version; a fenced writer (a zombie, inside the time
   window it had lost its partitions) replaced no other writer's file with other rows (a rewrite with
   the same rows is listed in ``OracleReport.fenced_overwrites``, for the test to judge).

The result is an :class:`OracleReport` with counts and a readable list of the first violations.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaException, TopicPartition

from anomaly.records import REJECTING
from domains import DOMAINS
from domains.base import INVALID_ENUM, SCHEMA_ERROR, UNIT_MISMATCH, UNIT_VIOLATION
from merger.periods import Calendar, Grain, parse_name
from storage.base import ObjectStore
from tests.support.kafka import Produced

Position = tuple[str, int, int]  # topic, partition, offset
RowId = tuple[str, int, int, int]  # topic, partition, offset, item_index
TP = tuple[str, int]

# Reasons that keep a message out of the fact files (decoder rejects + the engine's rejecting ones).
REJECTED_REASONS = frozenset({SCHEMA_ERROR, INVALID_ENUM, UNIT_VIOLATION, UNIT_MISMATCH, *REJECTING})
MERGED_GRAINS = ("hour", "day", "week")
GRAINS = ("minute", *MERGED_GRAINS)
MANIFEST_META = b"fms.manifest"
DURABLE_SLACK_S = 1.5  # S3 LastModified has whole seconds; the sample's clock is the same machine's

# Reader-visible data: facts (<domain>/), DLQ rows (<domain>/_dlq/) and statistics (<domain>/stats/).
_DATA = re.compile(
    r"^(?P<root>(?P<domain>[a-z_]+)(?:/(?P<kind>_dlq|stats))?)/(?P<grain>minute|hour|day|week)/(?P<name>[^/]+)$"
)
_KINDS = {None: "facts", "_dlq": "dlq", "stats": "stats"}
_NAME = {
    "minute": re.compile(r"^\d{8}_\d{4}(?:_[A-Za-z0-9-]+)?\.parquet$"),
    "hour": re.compile(r"^\d{8}_\d{2}_\d{2}\.parquet$"),
    "day": re.compile(r"^\d{8}\.parquet$"),
    "week": re.compile(r"^\d{8}_\d{8}\.parquet$"),
}
_TEMP_MARKERS = (".tmp", "tmp-", ".part", ".partial", ".inprogress", "~", ".crdownload", ".upload")


# -- what storage holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectVersion:
    """One version of one object (the only version when the view has no history)."""

    key: str
    version: str | None
    modified: float  # epoch seconds
    latest: bool
    deleted: bool = False  # an S3 delete marker
    size: int = 0


class StorageView(Protocol):
    """What the oracle reads storage through."""

    history: bool  # True if :meth:`versions` returns every version ever written, not just the latest

    def versions(self) -> list[ObjectVersion]:
        """Every object version (or every current object), oldest first per key."""
        ...

    def read(self, obj: ObjectVersion) -> bytes:
        """The bytes of one version."""
        ...


class StoreView:
    """The current objects of any :class:`ObjectStore` (no history)."""

    history = False

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def versions(self) -> list[ObjectVersion]:
        """Every current object."""
        return [
            ObjectVersion(o.key, None, o.updated.timestamp(), latest=True, size=o.size) for o in self.store.list("")
        ]

    def read(self, obj: ObjectVersion) -> bytes:
        """The current bytes."""
        return self.store.get(obj.key)


class S3VersionedView:
    """Every version of every object in an S3 bucket with versioning on (see :func:`enable_versioning`)."""

    history = True

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
        from minio import Minio

        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False)
        self.bucket = bucket

    @classmethod
    def from_env(cls, env: Mapping[str, str], endpoint: str | None = None) -> S3VersionedView:
        """From a collector's MINIO_* environment (``endpoint`` overrides, e.g. to bypass a proxy)."""
        return cls(endpoint or env["MINIO_ENDPOINT"], env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"],
                   env["MINIO_BUCKET"])  # fmt: skip

    def versions(self) -> list[ObjectVersion]:
        """ListObjectVersions over the whole bucket, oldest first per key."""
        out = []
        for o in self.client.list_objects(self.bucket, recursive=True, include_version=True):
            if o.object_name is None:
                continue
            modified = o.last_modified.timestamp() if o.last_modified else 0.0
            out.append(
                ObjectVersion(
                    o.object_name, o.version_id, modified, latest=str(o.is_latest).lower() == "true",
                    deleted=bool(o.is_delete_marker), size=int(o.size or 0),
                )
            )  # fmt: skip
        # Keys in order; within a key, by time, the latest last (ties: the latest flag decides).
        return sorted(out, key=lambda v: (v.key, v.modified, v.latest))

    def read(self, obj: ObjectVersion) -> bytes:
        """GET one version."""
        response = self.client.get_object(self.bucket, obj.key, version_id=obj.version)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()


def enable_versioning(endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
    """Turn S3 versioning on for ``bucket`` (moto and MinIO both keep every version then)."""
    from minio import Minio
    from minio.commonconfig import ENABLED
    from minio.versioningconfig import VersioningConfig

    client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))


# -- committed offsets sampled during a run ------------------------------------------------------


@dataclass(frozen=True)
class CommitSample:
    """A group's committed offsets at one moment (``at``: epoch seconds, taken after the reply)."""

    at: float
    offsets: dict[TP, int]


class CommitSampler:
    """Samples a consumer group's committed offsets in a thread (OffsetFetch only; never joins the group).

    ``topics`` are read from metadata on every sample, so partitions added to a topic are sampled too.
    Errors (a broker being restarted) skip a sample.
    """

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], interval: float = 0.5) -> None:
        self.bootstrap, self.group, self.topics, self.interval = bootstrap, group, list(topics), interval
        self.samples: list[CommitSample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CommitSampler:
        """Start sampling."""
        self._thread = threading.Thread(target=self._loop, name="commit-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[CommitSample]:
        """Stop (takes one last sample) and return the samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        return self.samples

    def _loop(self) -> None:
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": self.group, "enable.auto.commit": False,
            "socket.timeout.ms": 5000, "topic.metadata.refresh.interval.ms": 1000,
        })  # fmt: skip
        try:
            while True:
                stopping = self._stop.is_set()
                try:
                    self.samples.append(self.sample(consumer))
                except (KafkaException, KeyError, RuntimeError):
                    self.errors += 1
                if stopping:
                    return
                self._stop.wait(self.interval)
        finally:
            consumer.close()

    def sample(self, consumer: Consumer) -> CommitSample:
        """One OffsetFetch for every partition of the topics."""
        metadata = consumer.list_topics(timeout=5)
        tps = [
            TopicPartition(t, p) for t in self.topics if t in metadata.topics for p in metadata.topics[t].partitions
        ]
        result = consumer.committed(tps, timeout=5)
        return CommitSample(time.time(), {(tp.topic, tp.partition): tp.offset for tp in result if tp.offset >= 0})


# -- the DLQ topics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqRecord:
    """A DLQ topic record that names its source message."""

    reason: str
    source: Position
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # CreateTime: set when the collector produced it, before the broker's ack
    topic: str


def read_dlq(bootstrap: str, domains: Iterable[str], idle_s: float = 2.0, timeout_s: float = 120.0) -> list[DlqRecord]:
    """Every record of the domains' DLQ topics that carries a source position (sweep findings carry none)."""
    topics = [DOMAINS[d].dlq_topic.name for d in domains]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "oracle-dlq-reader", "enable.auto.commit": False})
    out: list[DlqRecord] = []
    try:
        metadata = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p, 0) for t in topics if t in metadata.topics for p in metadata.topics[t].partitions]
        highs = {}
        for tp in tps:
            with contextlib.suppress(KafkaException):
                highs[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign(tps)
        position: dict[TP, int] = {}
        started = last = time.monotonic()
        while time.monotonic() - started < timeout_s:
            batch = consumer.consume(1000, 0.3)
            good = [m for m in batch if m.error() is None]
            for m in good:
                position[(m.topic(), m.partition())] = m.offset() + 1  # type: ignore[index,operator]
                headers = {k: v for k, v in (m.headers() or []) if v is not None}
                if "dlq.source.offset" not in headers:
                    continue
                out.append(
                    DlqRecord(
                        reason=headers.get("dlq.reason", b"").decode(),
                        source=(headers["dlq.source.topic"].decode(), int(headers["dlq.source.partition"]),
                                int(headers["dlq.source.offset"])),
                        key=m.key(), value=m.value(), timestamp_ms=m.timestamp()[1], topic=m.topic() or "",
                    )
                )  # fmt: skip
            if good:
                last = time.monotonic()
                continue
            reached = all(position.get(tp, 0) >= high for tp, high in highs.items())
            if (reached and time.monotonic() - last > 0.5) or time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return out


# -- the report ------------------------------------------------------------------------------------


CHECKS = ("accounting", "merged_duplicates", "readable", "no_temporaries", "commit_safety", "stable_keys")


@dataclass
class OracleReport:
    """Counts and violations of one oracle run."""

    produced: int = 0
    rows_expected: int = 0
    rows_stored: int = 0  # distinct fact rows (positions + item index) in minute or merged files
    messages_stored: int = 0
    dlq_records: int = 0  # DLQ topic records with a source (at least once: replays may resend)
    dlq_rejected_messages: int = 0  # distinct source positions with a rejecting reason
    dlq_flagged_records: int = 0
    dlq_resent: int = 0  # extra copies of a rejected message's DLQ record
    collapsed: int = 0  # injected duplicate copies merged away by their de-dup key
    minute_files: int = 0
    merged_files: dict[str, int] = field(default_factory=dict)
    merged_rows: dict[str, int] = field(default_factory=dict)
    minute_duplicate_rows: int = 0  # extra copies of a row across minute files (allowed: replays)
    duplicates: int = 0  # extra copies of a row inside one merged grain (must be 0)
    losses: int = 0  # produced messages in neither the fact files nor the DLQ, or missing from a merged file
    object_versions: int = 0
    rewritten_keys: int = 0  # minute keys written more than once
    fenced_overwrites: list[str] = field(default_factory=list)  # same-rows rewrites by a fenced writer
    samples: int = 0
    history: bool = False
    violations: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECKS})
    counts: Counter[str] = field(default_factory=Counter)

    def violate(self, check: str, message: str, limit: int = 8) -> None:
        """Record one violation (the first ``limit`` per check are kept verbatim)."""
        self.counts[check] += 1
        if len(self.violations[check]) < limit:
            self.violations[check].append(message)

    @property
    def ok(self) -> bool:
        """No violation of any check."""
        return not sum(self.counts.values())

    def summary(self) -> str:
        """One paragraph of figures."""
        merged = ", ".join(f"{g} {self.merged_files.get(g, 0)} files/{self.merged_rows.get(g, 0)} rows"
                           for g in MERGED_GRAINS)  # fmt: skip
        return (
            f"oracle: produced {self.produced} messages ({self.rows_expected} rows expected); stored "
            f"{self.messages_stored} messages / {self.rows_stored} rows in {self.minute_files} minute files "
            f"({self.minute_duplicate_rows} duplicate rows across minute files); merged: {merged}; "
            f"DLQ {self.dlq_rejected_messages} rejected messages in {self.dlq_records} records "
            f"({self.dlq_resent} re-sent, {self.dlq_flagged_records} flagged); collapsed duplicates {self.collapsed}; "
            f"duplicates in merged files {self.duplicates}; losses {self.losses}; "
            f"{self.object_versions} object versions ({self.rewritten_keys} minute keys rewritten); "
            f"{self.samples} commit samples; history {'yes' if self.history else 'no'}"
        )

    def failure_message(self) -> str:
        """The summary and the first violations of each failed check."""
        lines = [self.summary()]
        for check in CHECKS:
            if self.counts[check]:
                lines.append(f"[{check}] {self.counts[check]} violation(s), first ones:")
                lines += [f"  - {v}" for v in self.violations[check]]
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Fail the test with :meth:`failure_message` unless every check passed."""
        assert self.ok, self.failure_message()


# -- reading files -----------------------------------------------------------------------------


@dataclass
class _File:
    version: ObjectVersion
    root: str
    domain: str
    kind: str  # "facts", "dlq" or "stats"
    grain: str
    name: str
    rows: pl.DataFrame | None = None  # identity columns (+ timestamp and de-dup key for fact files)
    nrows: int = 0
    manifest: dict[str, object] | None = None
    writer: str | None = None

    @property
    def dlq(self) -> bool:
        """Not a fact file (DLQ rows or statistics)."""
        return self.kind != "facts"

    @property
    def manifest_key(self) -> str:
        """Where a merged file's JSON manifest lives."""
        stem = self.name.removesuffix(".parquet")
        if self.kind == "stats":
            return f"{self.domain}/_manifests/stats/{self.grain}/{stem}.json"
        return f"{self.root}/_manifests/{self.grain}/{stem}.json"


def _columns_for(domain: str, kind: str, available: Sequence[str]) -> list[str]:
    if kind == "stats":
        return []
    wanted = ["kafka_topic", "kafka_partition", "kafka_offset", "item_index", "timestamp"]
    if kind == "dlq":
        wanted += ["reason", "rejected"]
    else:
        spec = DOMAINS[domain]
        wanted += [spec.entity_key, *spec.dedup_key]
    seen: list[str] = []
    for c in wanted:
        if c in available and c not in seen:
            seen.append(c)
    return seen


def _load(file: _File, data: bytes, report: OracleReport) -> None:
    key = f"{file.version.key}" + (f" (version {file.version.version})" if file.version.version else "")
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        table = parquet.read(columns=_columns_for(file.domain, file.kind, names))
    except Exception as exc:  # noqa: BLE001 - any failure to read is the violation
        report.violate("readable", f"{key}: not a readable Parquet file: {type(exc).__name__}: {exc}")
        return
    file.nrows = parquet.metadata.num_rows
    if file.kind == "stats":
        return
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    file.rows = frame
    meta = parquet.schema_arrow.metadata or {}
    if file.grain == "minute":
        raw = meta.get(MANIFEST_META)
        if raw is None:
            report.violate("readable", f"{key}: minute file without an {MANIFEST_META.decode()} manifest")
            return
        manifest = json.loads(raw)
        file.manifest = manifest
        file.writer = str(manifest.get("writer")) if manifest.get("writer") is not None else None
        if int(manifest.get("rows", -1)) != frame.height:
            report.violate("readable", f"{key}: manifest says {manifest.get('rows')} rows, file holds {frame.height}")
        for pos in manifest.get("positions", []) or []:
            part = frame.filter(
                (pl.col("kafka_topic") == pos["kafka_topic"]) & (pl.col("kafka_partition") == pos["kafka_partition"])
            )
            span = (part["kafka_offset"].min(), part["kafka_offset"].max()) if part.height else None
            if span != (pos["first"], pos["last"]):
                report.violate("readable", f"{key}: manifest positions {pos} do not match the rows")


# -- the check ---------------------------------------------------------------------------------------


def check(
    produced: Sequence[Produced],
    view: StorageView,
    *,
    dlq: Sequence[DlqRecord] = (),
    samples: Sequence[CommitSample] = (),
    local_root: Path | None = None,
    calendar: Calendar | None = None,
    strict_reasons: bool = True,
    fenced: Mapping[str, tuple[float, float]] | None = None,
    allow_backwards: Callable[[TP, CommitSample, CommitSample], bool] | None = None,
    commit_floor: Mapping[TP, int] | None = None,
) -> OracleReport:
    """Run the six checks; see the module docstring. ``strict_reasons``: the decoder's outcome must be
    the generator's expectation (rows vs DLQ reason), as with the anomaly engine off. ``fenced``:
    writer id -> (from, until) epoch seconds during which it had lost its partitions and must not
    overwrite another writer's file. ``allow_backwards``
    may excuse a committed offset moving back (e.g. a broker that lost its offsets), else it is a
    violation. ``commit_floor``: per partition, offsets below it belong to another loader (the
    backfill, below the realtime group's start boundary) and are exempt from check 5 (not from 1)."""
    report = OracleReport(produced=len(produced), history=view.history, samples=len(samples))
    calendar = calendar or Calendar()
    versions = view.versions()
    report.object_versions = len(versions)
    by_pos: dict[Position, Produced] = {}
    for p in produced:
        by_pos[(p.message.topic, p.partition, p.offset)] = p
    report.rows_expected = sum(p.message.expected_rows for p in produced if p.message.expected_reason is None)

    files, manifests = _classify(versions, report, local_root)
    for f in files:
        if not f.version.deleted:
            _load(f, view.read(f.version), report)
    latest = [f for f in files if f.version.latest and not f.version.deleted and (f.rows is not None or
              f.kind == "stats")]  # fmt: skip
    _check_manifests(view, latest, manifests, report)

    facts = _union_rows(latest)
    collapsed = _collapsed_by_key(by_pos, facts, [f for f in files if f.kind == "facts" and f.rows is not None])
    _check_accounting(by_pos, facts, dlq, strict_reasons, report, collapsed)
    _check_merged(latest, facts, calendar, report)
    _check_commits(by_pos, facts, files, dlq, samples, view.history, report, allow_backwards, commit_floor or {})
    _check_stable_keys(files, fenced or {}, report)
    return report


def _classify(
    versions: list[ObjectVersion], report: OracleReport, local_root: Path | None
) -> tuple[list[_File], dict[str, ObjectVersion]]:
    files: list[_File] = []
    manifests: dict[str, ObjectVersion] = {}
    for v in versions:
        top = v.key.split("/", 1)[0]
        if top.startswith("_") or top not in DOMAINS:
            continue  # _dims, _state, _locks, _backfill, _progress...: not reader-visible
        current = v.latest and not v.deleted
        if _temporary(v.key):
            if current:
                report.violate("no_temporaries", f"{v.key}: temporary or partial object left under a data prefix")
            continue
        data = _DATA.match(v.key)
        if data:
            if not _NAME[data["grain"]].match(data["name"]):
                if current:
                    report.violate("no_temporaries", f"{v.key}: not a final {data['grain']} file name")
                continue
            kind = _KINDS[data["kind"]]
            files.append(_File(v, data["root"], data["domain"], kind, data["grain"], data["name"]))
            continue
        if "/_manifests/" in v.key and v.key.endswith(".json"):
            if current:
                manifests[v.key] = v
            continue
        segments = v.key.split("/")[1:-1]
        if current and not any(s.startswith("_") for s in segments):
            # Metadata lives under "_" folders (_manifests, _complete...); anything else is reader-visible.
            report.violate("no_temporaries", f"{v.key}: unexpected object under a reader-visible prefix")
    if local_root is not None:
        for path in local_root.rglob("*"):
            rel = path.relative_to(local_root).as_posix()
            if path.is_file() and (path.name.startswith(".") or _temporary(rel)):
                report.violate("no_temporaries", f"{rel}: in-flight file left on disk")
    report.minute_files = sum(1 for f in files if f.grain == "minute" and not f.dlq and f.version.latest
                              and not f.version.deleted)  # fmt: skip
    report.rewritten_keys = sum(
        1 for n in Counter(f.version.key for f in files if f.grain == "minute" and not f.version.deleted).values()
        if n > 1
    )
    return files, manifests


def _temporary(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") or any(m in name.lower() for m in _TEMP_MARKERS)


def _check_manifests(
    view: StorageView, latest: list[_File], manifests: dict[str, ObjectVersion], report: OracleReport
) -> None:
    """Every merged file has its JSON manifest with the right row count; every manifest its file."""
    merged_keys = set()
    for f in latest:
        if f.grain == "minute":
            continue
        mkey = f.manifest_key
        merged_keys.add(mkey)
        version = manifests.get(mkey)
        if version is None:
            report.violate("readable", f"{f.version.key}: merged file without its manifest {mkey}")
            continue
        try:
            manifest = json.loads(view.read(version))
        except ValueError as exc:
            report.violate("readable", f"{mkey}: manifest is not JSON: {exc}")
            continue
        if "rows" in manifest and int(manifest["rows"]) != f.nrows:
            report.violate("readable", f"{f.version.key}: manifest says {manifest.get('rows')} rows, "
                                       f"file holds {f.nrows}")  # fmt: skip
    for mkey in manifests:
        if mkey not in merged_keys:
            report.violate("readable", f"{mkey}: manifest without its merged file")


def _identity(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("kafka_topic", "kafka_partition", "kafka_offset", "item_index")


def _union_rows(latest: list[_File]) -> dict[str, pl.DataFrame]:
    """Per domain: every distinct fact row visible now (minute or merged), with its timestamp and keys."""
    out: dict[str, pl.DataFrame] = {}
    by_domain: dict[str, list[pl.DataFrame]] = defaultdict(list)
    for f in latest:
        if not f.dlq and f.rows is not None:
            by_domain[f.domain].append(f.rows)
    for domain, frames in by_domain.items():
        spec = DOMAINS[domain]
        cols = list(dict.fromkeys(["kafka_topic", "kafka_partition", "kafka_offset", "item_index", "timestamp",
                                   spec.entity_key, *spec.dedup_key]))  # fmt: skip
        out[domain] = pl.concat([fr.select(cols) for fr in frames], how="vertical_relaxed").unique(
            subset=["kafka_topic", "kafka_partition", "kafka_offset", "item_index"], keep="first"
        )
    return out


def _check_accounting(
    by_pos: dict[Position, Produced],
    facts: dict[str, pl.DataFrame],
    dlq: Sequence[DlqRecord],
    strict: bool,
    report: OracleReport,
    collapsed: set[Position],
) -> None:
    """Check 1: each produced offset is in exactly one of {fact rows, rejected DLQ records}."""
    items: dict[Position, set[int]] = defaultdict(set)
    entity: dict[Position, str] = {}
    for domain, frame in facts.items():
        key_col = DOMAINS[domain].entity_key
        for topic, partition, offset, index, ent in frame.select(
            "kafka_topic", "kafka_partition", "kafka_offset", "item_index", key_col
        ).iter_rows():
            items[(topic, partition, offset)].add(index)
            entity[(topic, partition, offset)] = str(ent)
    report.rows_stored = sum(len(v) for v in items.values())
    report.messages_stored = len(items)
    rejected: dict[Position, list[DlqRecord]] = defaultdict(list)
    for record in dlq:
        report.dlq_records += 1
        if record.reason in REJECTED_REASONS:
            rejected[record.source].append(record)
        else:
            report.dlq_flagged_records += 1
    report.dlq_rejected_messages = len(rejected)
    report.dlq_resent = sum(len(v) - 1 for v in rejected.values())
    originals: dict[tuple[str, bytes | None, bytes], Position] = {}
    for pos in sorted(by_pos):
        m = by_pos[pos].message
        if m.fault != "duplicate":
            originals.setdefault((m.topic, m.key, m.value), pos)

    for pos, p in by_pos.items():
        m = p.message
        stored, records = pos in items, rejected.get(pos, [])
        where = f"{pos[0]}[{pos[1]}]@{pos[2]} ({m.msg_id}, {m.fault or 'clean'})"
        if stored and records:
            report.violate("accounting", f"{where}: both stored ({len(items[pos])} rows) and rejected "
                                         f"({records[0].reason})")  # fmt: skip
        elif not stored and not records:
            original = originals.get((m.topic, m.key, m.value))
            if (m.fault == "duplicate" and original is not None and original in items) or pos in collapsed:
                report.collapsed += 1  # its rows were stored, then merged away: their de-dup keys are kept
                continue
            report.losses += 1
            report.violate("accounting", f"{where}: lost (neither in fact files nor in the DLQ)")
        elif stored:
            if strict and m.expected_reason is not None:
                report.violate("accounting", f"{where}: stored, but expected DLQ reason {m.expected_reason}")
            elif m.expected_reason is None and len(items[pos]) != m.expected_rows:
                report.losses += 1
                report.violate("accounting", f"{where}: {len(items[pos])} of {m.expected_rows} rows stored")
            if entity[pos] != m.key.decode(errors="replace"):
                report.violate("accounting", f"{where}: row entity {entity[pos]!r} is not the message key {m.key!r}")
        else:
            if strict and records[0].reason != m.expected_reason:
                report.violate("accounting", f"{where}: DLQ reason {records[0].reason}, expected "
                                             f"{m.expected_reason or 'rows'}")  # fmt: skip
            if any(r.value != m.value or r.key != m.key for r in records):
                report.violate("accounting", f"{where}: DLQ record bytes/key differ from the produced message")
    for pos in items.keys() - by_pos.keys():
        report.violate("accounting", f"{pos[0]}[{pos[1]}]@{pos[2]}: stored rows for an offset never produced")
    for pos in rejected.keys() - by_pos.keys():
        report.violate("accounting", f"{pos[0]}[{pos[1]}]@{pos[2]}: DLQ record for an offset never produced")


def _collapsed_by_key(
    by_pos: dict[Position, Produced], facts: dict[str, pl.DataFrame], versions: list[_File]
) -> set[Position]:
    """Messages no longer visible whose rows were stored once (an older object version) and whose every
    de-dup key is still visible at another position: the merger kept the first row of each key (SPEC §3),
    as it must. Needs history (every object version); without it such a message counts as lost."""
    position = ["kafka_topic", "kafka_partition", "kafka_offset"]
    visible = {pos for frame in facts.values() for pos in frame.select(position).unique().iter_rows()}
    missing = [pos for pos in by_pos if pos not in visible]
    if not missing:
        return set()
    gone = pl.DataFrame(missing, schema={"kafka_topic": pl.String, "kafka_partition": pl.Int32,
                                         "kafka_offset": pl.Int64}, orient="row")  # fmt: skip
    out: set[Position] = set()
    for domain, current in facts.items():
        keys = list(DOMAINS[domain].dedup_key)
        frames = [f.rows for f in versions if f.domain == domain and f.rows is not None]
        if not frames:
            continue
        cols = list(dict.fromkeys([*position, "item_index", *keys]))
        history = pl.concat([fr.select(cols) for fr in frames], how="vertical_relaxed").unique()
        once = history.join(gone, on=position, how="semi")
        if not once.height:
            continue
        kept = current.select(keys).unique()
        uncovered = once.join(kept, on=keys, how="anti").select(position).unique()
        candidates = once.select(position).unique().join(uncovered, on=position, how="anti")
        out.update(candidates.iter_rows())
    return out


def _check_merged(
    latest: list[_File], facts: dict[str, pl.DataFrame], calendar: Calendar, report: OracleReport
) -> None:
    """Check 2: no row twice per merged grain, no de-dup key twice per file, each file = its period's rows."""
    identity = ["kafka_topic", "kafka_partition", "kafka_offset", "item_index"]
    for grain in MERGED_GRAINS:
        for domain in DOMAINS:
            dlq = [f.rows for f in latest if f.grain == grain and f.kind == "dlq" and f.domain == domain
                   and f.rows is not None]  # fmt: skip
            if dlq:
                rows = pl.concat([_identity(r) for r in dlq], how="vertical_relaxed")
                extra = rows.height - rows.unique().height
                if extra:
                    report.duplicates += extra
                    report.violate("merged_duplicates", f"{domain} DLQ {grain} files: {extra} duplicate records")
        for domain in DOMAINS:
            merged = [f for f in latest if f.grain == grain and not f.dlq and f.domain == domain and f.rows is not None]
            if not merged:
                continue
            report.merged_files[grain] = report.merged_files.get(grain, 0) + len(merged)
            allrows = pl.concat([_identity(f.rows) for f in merged if f.rows is not None], how="vertical_relaxed")
            report.merged_rows[grain] = report.merged_rows.get(grain, 0) + allrows.height
            extra = allrows.height - allrows.unique().height
            if extra:
                report.duplicates += extra
                dup = allrows.filter(allrows.is_duplicated()).head(3).rows()
                report.violate("merged_duplicates", f"{domain} {grain} files: {extra} duplicate rows, e.g. {dup}")
            spec = DOMAINS[domain]
            universe = facts.get(domain)
            for f in merged:
                assert f.rows is not None
                keys = list(spec.dedup_key)
                twice = f.rows.height - f.rows.unique(subset=keys).height
                if twice:
                    report.duplicates += twice
                    report.violate("merged_duplicates", f"{f.version.key}: {twice} rows repeat a de-dup key")
                period = parse_name(f.name.removesuffix(".parquet"), Grain[grain.upper()], calendar)
                if period is None or universe is None:
                    report.violate("readable", f"{f.version.key}: name does not parse as a {grain} period")
                    continue
                inside = universe.filter(
                    (pl.col("timestamp") >= period.start) & (pl.col("timestamp") < period.end)
                )
                expected = inside.sort(identity).unique(subset=keys, keep="first").select(identity)
                have = f.rows.select(identity)
                missing = expected.join(have, on=identity, how="anti")
                surplus = have.join(expected, on=identity, how="anti")
                if missing.height:
                    report.losses += missing.height
                    report.violate("merged_duplicates", f"{f.version.key}: lacks {missing.height} rows of its period, "
                                                        f"e.g. {missing.head(3).rows()}")  # fmt: skip
                if surplus.height:
                    report.violate("merged_duplicates", f"{f.version.key}: {surplus.height} rows that are not the "
                                                        f"de-duplicated rows of its period, "
                                                        f"e.g. {surplus.head(3).rows()}")  # fmt: skip


def _check_commits(
    by_pos: dict[Position, Produced],
    facts: dict[str, pl.DataFrame],
    files: list[_File],
    dlq: Sequence[DlqRecord],
    samples: Sequence[CommitSample],
    history: bool,
    report: OracleReport,
    allow_backwards: Callable[[TP, CommitSample, CommitSample], bool] | None,
    floor: Mapping[TP, int],
) -> None:
    """Check 5: nothing below a committed offset was missing (at the sample's time when we have history)."""
    if not samples:
        return
    durable_at: dict[Position, float] = {}
    if history:
        for f in files:
            if f.dlq or f.rows is None or f.version.deleted:
                continue
            for topic, partition, offset in f.rows.select("kafka_topic", "kafka_partition", "kafka_offset").unique(
            ).iter_rows():
                pos = (topic, partition, offset)
                durable_at[pos] = min(durable_at.get(pos, f.version.modified), f.version.modified)
    else:
        for frame in facts.values():
            for pos in frame.select("kafka_topic", "kafka_partition", "kafka_offset").unique().iter_rows():
                durable_at[pos] = 0.0
    for record in dlq:
        if record.reason in REJECTED_REASONS:
            at = record.timestamp_ms / 1000 if history else 0.0
            durable_at[record.source] = min(durable_at.get(record.source, at), at)
    offsets_by_tp: dict[TP, list[int]] = defaultdict(list)
    for topic, partition, offset in by_pos:
        offsets_by_tp[(topic, partition)].append(offset)
    for offsets in offsets_by_tp.values():
        offsets.sort()
    reported: set[TP] = set()
    previous: dict[TP, tuple[int, CommitSample]] = {}
    for sample in samples:
        for tp, committed in sample.offsets.items():
            before = previous.get(tp)
            backwards = before is not None and committed < before[0] and tp not in reported
            if backwards and (allow_backwards is None or not allow_backwards(tp, before[1], sample)):  # type: ignore[index]
                reported.add(tp)
                report.violate("commit_safety", f"{tp[0]}[{tp[1]}]: committed offset went back from "
                                                f"{before[0]} to {committed} (a fenced member committed?)")  # type: ignore[index]
            previous[tp] = (committed, sample)
            if tp in reported:
                continue
            for offset in offsets_by_tp.get(tp, []):
                if offset >= committed:
                    break
                if offset < floor.get(tp, 0):
                    continue
                at = durable_at.get((tp[0], tp[1], offset))
                if by_pos[(tp[0], tp[1], offset)].message.fault == "duplicate" and at is None:
                    continue  # collapsed copy: accounted in check 1
                if at is None or at > sample.at + DURABLE_SLACK_S:
                    reported.add(tp)
                    when = "never" if at is None else f"only {at - sample.at:.1f} s later"
                    report.violate("commit_safety", f"{tp[0]}[{tp[1]}]: committed {committed} at "
                                                    f"{datetime.fromtimestamp(sample.at, UTC):%H:%M:%S.%f} but offset "
                                                    f"{offset} was durable {when}")  # fmt: skip
                    break


def _check_stable_keys(files: list[_File], fenced: Mapping[str, tuple[float, float]], report: OracleReport) -> None:
    """Check 6: a minute key's versions hold the same positions; merged rewrites keep rows; a fenced
    writer overwrote nobody."""
    by_key: dict[str, list[_File]] = defaultdict(list)
    for f in files:
        if not f.version.deleted and f.rows is not None:
            by_key[f.version.key].append(f)
    for key, versions in by_key.items():
        for i, v in enumerate(versions):
            window = fenced.get(v.writer or "")
            if window is None or not window[0] - DURABLE_SLACK_S <= v.version.modified <= window[1] + DURABLE_SLACK_S:
                continue
            replaced = [o for o in versions[:i] if o.writer != v.writer]
            if not replaced or v.rows is None or replaced[-1].rows is None:
                continue
            what = (f"{key}: fenced writer {v.writer} overwrote the file of {replaced[-1].writer} "
                    f"{v.version.modified - window[0]:.1f} s after it was fenced")  # fmt: skip
            if set(_identity(v.rows).iter_rows()) == set(_identity(replaced[-1].rows).iter_rows()):
                report.fenced_overwrites.append(what + " (same rows)")
            else:
                report.violate("stable_keys", what + " with other rows")
        if len(versions) < 2:
            continue
        sets = [set(_identity(v.rows).iter_rows()) for v in versions if v.rows is not None]
        if versions[0].grain == "minute":
            for older, newer, vn in zip(sets, sets[1:], versions[1:], strict=False):
                if older != newer:
                    report.violate("stable_keys", f"{key}: rewritten (by {vn.writer}) with other positions: "
                                                  f"{len(older - newer)} rows dropped, {len(newer - older)} added")
        else:
            for older, newer in zip(sets, sets[1:], strict=False):
                if not older <= newer:
                    report.losses += len(older - newer)
                    report.violate("stable_keys", f"{key}: a rewrite dropped {len(older - newer)} rows")


def parquet_rows(data: bytes) -> int:
    """Row count of a Parquet object (helper for tests)."""
    return pq.read_metadata(io.BytesIO(data)).num_rows
