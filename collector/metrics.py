"""Prometheus metrics of the collector (exposed on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from anomaly.seed_metrics import SeedMetrics

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_IN = Counter("fms_messages_consumed", "Messages consumed", ["domain"], registry=REGISTRY)
ROWS_IN = Counter("fms_rows_decoded", "Rows produced by decoding", ["domain"], registry=REGISTRY)
ROWS_OUT = Counter("fms_rows_written", "Rows stored in minute files", ["domain"], registry=REGISTRY)
DLQ_ROWS_OUT = Counter("fms_dlq_rows_written", "DLQ records stored as Parquet under <domain>/_dlq/minute/",
                       ["domain"], registry=REGISTRY)
DLQ_RECORDS = Counter("fms_dlq_records", "Records sent to the DLQ", ["domain", "reason"], registry=REGISTRY)
DLQ_DELIVERY_FAILURES = Counter(
    "fms_dlq_delivery_failures", "DLQ and alarm records the broker did not acknowledge (each is produced again)",
    ["topic"], registry=REGISTRY,
)
DLQ_PRODUCERS_CREATED = Counter(
    "fms_dlq_producer_replacements", "DLQ producers replaced after a fatal error (e.g. fenced)", registry=REGISTRY
)
FILES_WRITTEN = Counter("fms_files_written", "Minute files stored", ["domain"], registry=REGISTRY)
FILES_ALREADY_STORED = Counter(
    "fms_files_already_stored", "Minute files found already stored under their position-derived name (kept, not "
    "replaced): a replay after a crash, or an upload by a member that lost its partitions", ["domain"],
    registry=REGISTRY,
)
BYTES_WRITTEN = Counter("fms_bytes_written", "Bytes of Parquet stored", ["domain"], registry=REGISTRY)
FLUSH_SECONDS = Histogram(
    "fms_flush_latency_seconds", "Encode + upload time of one minute file", ["domain"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROCESS_SECONDS = Histogram(
    "fms_batch_processing_seconds", "Decode time of one consumed batch", registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORAGE_FAILURES = Counter("fms_storage_failures", "Failed storage writes (retried)", registry=REGISTRY)
STORAGE_UP = Gauge("fms_storage_up", "1 when the last storage write succeeded", registry=REGISTRY)
BUFFERED_BYTES = Gauge("fms_buffered_bytes", "Estimated bytes of rows waiting in memory", registry=REGISTRY)
BUFFERED_ROWS = Gauge("fms_buffered_rows", "Rows waiting in memory", registry=REGISTRY)
CONSUMER_LAG = Gauge("fms_consumer_lag", "Consumer lag per topic (sum over partitions)", ["topic"], registry=REGISTRY)
RETENTION_USED = Gauge(
    "fms_retention_used_ratio",
    "Age of the oldest message not yet stored, as a share of the topic's retention (1.0: the broker deletes it)",
    ["topic"], registry=REGISTRY,
)
KAFKA_LAG_MAX = Gauge("kafka_lag_max", "Largest consumer lag of any assigned partition", registry=REGISTRY)
NEWEST_STORED = Gauge(
    "fms_newest_stored_event_timestamp_seconds", "Newest event time stored per domain (freshness)", ["domain"],
    registry=REGISTRY,
)
FRESHNESS = Gauge(
    "fms_freshness_seconds", "Seconds between now and the newest event time stored per domain", ["domain"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge("fms_assigned_partitions", "Partitions assigned to this member", registry=REGISTRY)
COMMITS = Counter("fms_offset_commits", "Successful offset commits", registry=REGISTRY)
ALARMS = Counter("fms_alarms", "Alarms published to iot.alarm_log", ["domain", "rule"], registry=REGISTRY)
ANOMALIES = Counter("fms_anomaly_rows", "Stored rows flagged as anomalous", ["domain", "rule"], registry=REGISTRY)
FLAGGED = Counter("fms_flagged_messages", "Messages flagged or rejected by the anomaly engine", ["domain", "reason"],
                  registry=REGISTRY)
DIM_RELOADS = Counter("fms_dimension_reloads", "Dimension table reloads", ["outcome"], registry=REGISTRY)
# The seed-named per-domain metrics (SPEC §2.4), fed by the collector after each evaluated batch.
SEED = SeedMetrics(REGISTRY)
