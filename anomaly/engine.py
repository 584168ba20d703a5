"""The anomaly engine: one call per decoded batch of a domain → flagged rows, DLQ records, alarms.

Steps of :meth:`AnomalyEngine.evaluate` (rows are first put in Kafka order: partition, offset, item):

1. enrich: the domain's dimension joins and flag columns (:mod:`anomaly.rules`);
2. duplicate: the de-dup key seen before within the watermark at another position (state);
3. reasons: every applicable DLQ reason per row, one per message by ``REASON_PRIORITY``;
4. rejected messages (duplicate, unit_mismatch) leave the rows; nothing below sees them;
5. consecutive-exceedance counters and equipment status transitions (state), then alarms;
6. last-seen records of robots/devices for the offline sweep (state).

The clock is the ``now`` argument; nothing here reads the time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from anomaly.dedup import EVENT, SEEN_ITEM, SEEN_OFFSET, lookup, normalize_keys, store
from anomaly.dims import Dimensions
from anomaly.records import (
    ALARM_SCHEMA,
    DLQ_SCHEMA,
    DUPLICATE,
    LATE_ARRIVAL,
    LATE_ARRIVAL_DOMAINS,
    RANK,
    REJECTING,
    STATUS_PREVIOUS_MISMATCH,
    STATUS_TRANSITION,
    EngineConfig,
    Evaluation,
    alarm_id,
    flag_schema,
)
from anomaly.rules import RULES
from anomaly.rules.base import RID, RUN, Consecutive, Reason, RuleSet
from anomaly.state import EngineState
from domains import DOMAINS
from domains.base import POSITION_KEY, UTC_MICROS, Domain

_MSG = ["kafka_topic", "kafka_partition", "kafka_offset"]


class AnomalyEngine:
    """Evaluates batches against the dimension tables, keeping per-entity state in ``state``."""

    def __init__(self, dims: Dimensions, state: EngineState | None = None, config: EngineConfig | None = None) -> None:
        self.dims = dims
        self.state = state if state is not None else EngineState()
        self.config = config or EngineConfig()

    def evaluate(self, domain_name: str, rows: pl.DataFrame, now: datetime) -> Evaluation:
        """Evaluate decoded rows (``Domain.flat_schema``) of one domain at wall-clock time ``now``."""
        domain = DOMAINS[domain_name]
        rules = RULES[domain_name]
        source_columns = list(rows.columns)
        rows = rows.sort(list(POSITION_KEY)).with_row_index(RID)
        rows = rules.enrich(rows, self.dims, self.config)
        rows = rows.with_columns(self.duplicates(domain, rows).alias("_dup"))
        rows, dlq = self._route(domain, rules, rows, now)
        kept = rows.filter(~pl.col("_rejected"))
        if rules.consecutive is not None:
            kept = self._consecutive(rules.consecutive, kept)
        if rules.status_entity is not None:
            kept = self.status_transitions(rules.status_entity, kept)
        alarms = self._alarms(domain_name, rules, kept, now)
        if rules.heartbeat_entity is not None:
            self._track(domain_name, rules.heartbeat_entity, kept)
        flags = flag_schema(domain_name)
        out = kept.select(
            *source_columns,
            *[(pl.col(c) if c in kept.columns else pl.lit(None)).cast(t).alias(c) for c, t in flags.items()],
        )
        return Evaluation(domain=domain_name, rows=out, dlq=dlq, alarms=alarms)

    # -- duplicates -----------------------------------------------------------------------------

    def duplicates(self, domain: Domain, rows: pl.DataFrame) -> pl.Series:
        """Per row of ``rows``: its de-dup key was seen within the watermark at another position.

        Updates the state. Per partition, in Kafka order: a key's first position wins, over the stored
        entries and over later rows of the batch; the very same position again is a replay, not a
        duplicate. After the batch, entries older than the partition's newest event time − the
        domain's window are forgotten. All False when the domain has no window.
        """
        window = self.config.dedup_windows.get(domain.name)
        if window is None or rows.height == 0:
            return pl.Series("_dup", [False] * rows.height, dtype=pl.Boolean)
        window_us = window // timedelta(microseconds=1)
        keys = list(domain.dedup_key)
        event = "timestamp" if "timestamp" in keys else EVENT
        group = ["kafka_topic", "kafka_partition", *keys]
        frame = (
            rows.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i"), *POSITION_KEY,
                        *normalize_keys(rows, keys), pl.col("timestamp").dt.epoch("us").alias(EVENT))
            .sort(list(POSITION_KEY))  # already in this order in practice
            .with_columns(_first_offset=pl.col("kafka_offset").first().over(group),
                          _first_item=pl.col("item_index").first().over(group),
                          _repeat=pl.all_horizontal(pl.col(c) == pl.col(c).shift() for c in POSITION_KEY))
        )  # fmt: skip
        # The row that first carried its key in the batch (a repeated position, never seen in practice, is not).
        first = (pl.col("_first_offset") == pl.col("kafka_offset")) & (pl.col("_first_item") == pl.col("item_index"))
        first = first & ~pl.col("_repeat").fill_null(False)
        dup = (pl.coalesce(SEEN_OFFSET, "_first_offset") != pl.col("kafka_offset")) | (
            pl.coalesce(SEEN_ITEM, "_first_item") != pl.col("item_index")
        )
        flagged = []
        for (topic,), part in frame.partition_by("kafka_topic", as_dict=True).items():  # one topic per domain
            states = {p: self.state.partition(str(topic), p) for p in part.get_column("kafka_partition").unique()}
            for state in states.values():
                state.seen.configure(keys, event)
            part = lookup(part, {p: (s.seen, s.max_event_us - window_us) for p, s in states.items()})
            part = part.with_columns(_dup=dup)
            for p, newest in part.group_by("kafka_partition").agg(pl.col(EVENT).max()).iter_rows():
                if newest is not None and newest > states[p].max_event_us:
                    states[p].max_event_us = newest
            limits = {p: s.max_event_us - window_us for p, s in states.items()}
            limit = pl.col("kafka_partition").replace_strict(limits, return_dtype=pl.Int64)
            store(part.filter(pl.col(SEEN_OFFSET).is_null() & first & (pl.col(EVENT) >= limit)),
                  {p: s.seen for p, s in states.items()})  # fmt: skip
            for p, state in states.items():
                state.seen.expire(limits[p])
            flagged.append(part.get_column("_i").filter(part.get_column("_dup")))
        out = pl.Series("_dup", [False] * rows.height, dtype=pl.Boolean)
        return out.scatter(pl.concat(flagged), True) if flagged else out

    # -- DLQ routing ----------------------------------------------------------------------------

    def _reasons(self, domain: Domain, rules: RuleSet) -> list[Reason]:
        reasons = list(rules.reasons(self.config))
        reasons.append(Reason(DUPLICATE, pl.col("_dup"), pl.format("{} seen before within the watermark",
                                                                   pl.lit(" + ".join(domain.dedup_key)))))
        if domain.name in LATE_ARRIVAL_DOMAINS:
            delay = pl.col("ingestion_timestamp") - pl.col("timestamp")
            reasons.append(Reason(
                LATE_ARRIVAL, (delay > self.config.late_after).fill_null(False),
                pl.format("ingested {} s after its timestamp (limit {} s)", (delay.dt.total_milliseconds() / 1000),
                          pl.lit(self.config.late_after.total_seconds())),
            ))  # fmt: skip
        return sorted(reasons, key=lambda r: RANK[r.reason])

    def _route(
        self, domain: Domain, rules: RuleSet, rows: pl.DataFrame, now: datetime
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        reasons = self._reasons(domain, rules)
        reason: pl.Expr = pl.lit(None, pl.String)
        detail: pl.Expr = pl.lit(None, pl.String)
        rank: pl.Expr = pl.lit(None, pl.Int32)
        for r in reversed(reasons):  # the first in priority order ends up outermost
            cond = r.when.fill_null(False)
            reason = pl.when(cond).then(pl.lit(r.reason)).otherwise(reason)
            detail = pl.when(cond).then(r.detail).otherwise(detail)
            rank = pl.when(cond).then(pl.lit(RANK[r.reason], pl.Int32)).otherwise(rank)
        rows = rows.with_columns(_reason=reason, _detail=detail, _rank=rank)
        per_message = (
            rows.filter(pl.col("_rank").is_not_null())
            .sort([*_MSG, "_rank", "item_index"])
            .unique(_MSG, keep="first", maintain_order=True)
            .select(*_MSG, pl.col("_reason").alias("dlq_reason"), pl.col("_detail").alias("_msg_detail"),
                    pl.col(DOMAINS[domain.name].entity_key).cast(pl.String).alias("_entity"))
        )  # fmt: skip
        rows = rows.join(per_message.select(*_MSG, "dlq_reason"), on=_MSG, how="left").with_columns(
            _rejected=pl.col("dlq_reason").is_in(list(REJECTING)).fill_null(False)
        )
        dlq = per_message.select(
            pl.lit(domain.name).alias("domain"),
            *_MSG,
            pl.col("dlq_reason").alias("reason"),
            pl.col("_msg_detail").alias("detail"),
            pl.col("dlq_reason").is_in(list(REJECTING)).alias("rejected"),
            pl.col("_entity").alias("entity_id"),
            pl.lit(now).cast(UTC_MICROS).alias("detected_at"),
        ).cast(DLQ_SCHEMA)  # type: ignore[arg-type]
        return rows.sort(RID), dlq

    # -- stateful alarms ------------------------------------------------------------------------

    def _consecutive(self, spec: Consecutive, rows: pl.DataFrame) -> pl.DataFrame:
        """Add ``_run`` (consecutive exceedances up to and including the row) and update the counters.

        Rows are put in key order (stable: Kafka order within a key), where a row's run is its distance
        to the last row of its key that did not exceed, plus the stored run when none did in this batch.
        """
        group = ["kafka_topic", "kafka_partition", "_ckey"]
        ordered = (
            rows.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_pos"), *group[:2], spec.key.alias("_ckey"),
                        spec.exceeds.fill_null(False).alias("_exc"))
            .sort(group, maintain_order=True)
            .with_columns(_new=pl.any_horizontal(pl.int_range(pl.len()) == 0,
                                                 *(pl.col(c).ne_missing(pl.col(c).shift()) for c in group)))
        )  # fmt: skip
        keys = ordered.filter("_new").select(group)
        carry = [self.state.partition(t, p).runs.get(k, 0) for t, p, k in keys.iter_rows()]
        idx, exceeds, new = pl.int_range(pl.len(), dtype=pl.Int64), pl.col("_exc"), pl.col("_new")
        # The last row at or before this one that did not exceed; the one before its key's first if none did.
        last_break = pl.when(~exceeds).then(idx).when(new).then(idx - 1).otherwise(None).forward_fill()
        first = pl.when(new).then(idx).otherwise(None).forward_fill()
        carried = pl.lit(pl.Series(carry, dtype=pl.Int64)).gather(new.cast(pl.Int64).cum_sum() - 1)
        ordered = ordered.with_columns(
            pl.when(exceeds)
            .then(idx - last_break + pl.when(last_break == first - 1).then(carried).otherwise(0))
            .otherwise(0)
            .alias(RUN)
        )
        last = ordered.filter(new.shift(-1).fill_null(True)).select(*group, RUN)  # each key's last row
        for topic, partition, key, run in last.iter_rows():
            runs = self.state.partition(topic, partition).runs
            if run:
                runs[key] = int(run)
            else:
                runs.pop(key, None)
        run = pl.zeros(rows.height, pl.Int64, eager=True).scatter(ordered.get_column("_pos"), ordered.get_column(RUN))
        return rows.with_columns(run.alias(RUN))

    def _alarms(self, domain_name: str, rules: RuleSet, rows: pl.DataFrame, now: datetime) -> pl.DataFrame:
        spec = rules.alarm(self.config)
        fired = rows.filter(spec.fires.fill_null(False)).select(
            pl.lit(domain_name).alias("domain"),
            spec.entity.cast(pl.String).alias("entity_id"),
            spec.rule.alias("rule"),
            spec.severity.alias("severity"),
            spec.value.cast(pl.Float64).alias("value"),
            pl.col("threshold_min").cast(pl.Float64),
            pl.col("threshold_max").cast(pl.Float64),
            spec.unit.alias("unit"),
            spec.location.alias("location"),
            spec.description.alias("description"),
            pl.col("timestamp").alias("event_time"),
            pl.lit(now).cast(UTC_MICROS).alias("detected_at"),
            pl.col("kafka_topic").alias("source_topic"),
            pl.col("kafka_partition").alias("source_partition"),
            pl.col("kafka_offset").alias("source_offset"),
            pl.col("item_index").alias("source_item_index"),
        )
        ids = [
            alarm_id(domain_name, e, r, t, p, o, i)
            for e, r, t, p, o, i in zip(fired["entity_id"], fired["rule"], fired["source_topic"],
                                        fired["source_partition"], fired["source_offset"], fired["source_item_index"],
                                        strict=True)
        ]  # fmt: skip
        return fired.with_columns(alarm_id=pl.Series(ids, dtype=pl.String)).select(list(ALARM_SCHEMA)).cast(
            ALARM_SCHEMA  # type: ignore[arg-type]
        )

    # -- status transitions ---------------------------------------------------------------------

    def status_transitions(self, entity: str, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` plus the status flags of their message; moves each entity's last status (state).

        Per partition and ``entity``, messages in event-time (then Kafka) order are compared with the
        last status seen before them: the newest of the state and of the batch's earlier messages.

        - No status seen before: both flags null.
        - In order (event time at or after the last status'): ``status_transition`` = status.current
          differs from the last current; ``status_previous_mismatch`` = a transition whose
          status.previous is not the last current (a transition in between was missed).
        - Older than the last status seen (out of order): ``status_transition`` false (the state does
          not move back), ``status_previous_mismatch`` = status.current differs from the last current.

        The state keeps each entity's newest [event_us, status.current] and counts the transitions.
        """
        msg = ["kafka_topic", "kafka_partition", "kafka_offset"]
        group = ["kafka_topic", "kafka_partition", entity]
        flags = {STATUS_TRANSITION: pl.Boolean(), STATUS_PREVIOUS_MISMATCH: pl.Boolean()}
        if rows.height == 0:
            return rows.with_columns(pl.lit(None, t).alias(c) for c, t in flags.items())
        messages = (
            rows.sort(list(POSITION_KEY)).unique(msg, keep="first", maintain_order=True)
            .select(*group, "kafka_offset", pl.col("timestamp").dt.epoch("us").alias("_ts"), "status_current",
                    "status_previous")
        )  # fmt: skip
        entities = messages.select(group).unique(maintain_order=True)
        known = [self.state.partition(t, p).entity_status.get(e) for t, p, e in entities.iter_rows()]
        prior = entities.with_columns(
            pl.Series("_last_ts", [k[0] if k else None for k in known], dtype=pl.Int64),
            pl.Series("_last", [k[1] if k else None for k in known], dtype=pl.String),
        )
        current, previous, last = pl.col("status_current"), pl.col("status_previous"), pl.col("_last")
        late = pl.col("_last_ts").is_not_null() & (pl.col("_ts") < pl.col("_last_ts"))
        before_late = pl.col("_late").shift().over(group)
        reference = pl.when(before_late.is_null() | before_late).then(last).otherwise(current.shift().over(group))
        changed = current != pl.col("_ref")
        compared = (
            messages.join(prior, on=group, how="left", nulls_equal=True)
            .sort(*group, "_ts", "kafka_offset")
            .with_columns(_late=late)
            .with_columns(_ref=pl.when(pl.col("_late")).then(last).otherwise(reference))
            .with_columns(
                pl.when(pl.col("_ref").is_null()).then(None).when(pl.col("_late")).then(False).otherwise(changed)
                .alias(STATUS_TRANSITION),
                pl.when(pl.col("_ref").is_null()).then(None).when(pl.col("_late")).then(changed)
                .otherwise(changed & (previous != pl.col("_ref"))).alias(STATUS_PREVIOUS_MISMATCH),
            )
        )  # fmt: skip
        in_order = compared.filter(~pl.col("_late"))
        newest = in_order.group_by(group, maintain_order=True).agg(pl.col("_ts").last(), current.last())
        for topic, partition, key, ts, status in newest.iter_rows():
            self.state.partition(topic, partition).entity_status[key] = [ts, status]
        counted = in_order.filter(pl.col(STATUS_TRANSITION)).group_by("kafka_topic", "kafka_partition").len()
        for topic, partition, n in counted.iter_rows():
            self.state.partition(topic, partition).status_transitions += n
        return rows.join(compared.select(*msg, *flags), on=msg, how="left", maintain_order="left")

    # -- last seen ------------------------------------------------------------------------------

    def _track(self, domain_name: str, entity: str, rows: pl.DataFrame) -> None:
        """Remember each entity's newest report (robot status, battery, transitions too)."""
        extra = ["device_type"] if "device_type" in rows.columns else []
        latest = rows.sort("timestamp", *POSITION_KEY).group_by(["kafka_topic", "kafka_partition", entity]).last()
        epoch_us = pl.col("timestamp").dt.epoch("us").alias("timestamp")  # exact, no float seconds
        for row in latest.select("kafka_topic", "kafka_partition", entity, epoch_us, "kafka_offset", "item_index",
                                 "location", *extra).iter_rows(named=True):  # fmt: skip
            state = self.state.partition(row["kafka_topic"], row["kafka_partition"])
            ts = row["timestamp"]
            seen = state.last_seen.get(row[entity])
            if seen is not None and seen["ts"] >= ts:
                continue  # a replayed or out-of-order older report does not reset the silence
            state.last_seen[row[entity]] = {
                "domain": domain_name, "ts": ts, "offset": row["kafka_offset"], "item_index": row["item_index"],
                "location": row["location"], "device_type": row.get("device_type"), "alerted": False,
            }  # fmt: skip
        if domain_name == "robot_status":
            self._robot_history(rows)

    def _robot_history(self, rows: pl.DataFrame) -> None:
        """Status transitions and battery drain per hour (outside charging), per partition.

        Each report, in event-time (then Kafka) order per robot, is compared with the robot's report
        before it (the state's for the first one of the batch): a different status is a transition; a
        later report, not charging, whose level did not rise adds the drop and the time between them.
        """
        group = ["kafka_topic", "kafka_partition", "robot_id"]
        ordered = rows.sort("timestamp", *POSITION_KEY).select(
            *group, pl.col("timestamp").dt.epoch("us").alias("_ts"), pl.col("status_current").alias("_status"),
            pl.col("battery_level").cast(pl.Float64).alias("_level"),
        )  # fmt: skip
        robots = ordered.select(group).unique(maintain_order=True)
        before = [
            (state.status.get(robot), *(state.battery.get(robot) or (None, None)))
            for state, robot in ((self.state.partition(t, p), r) for t, p, r in robots.iter_rows())
        ]
        robots = robots.with_columns(
            pl.Series("_status0", [b[0] for b in before], dtype=pl.String),
            pl.Series("_ts0", [b[1] for b in before], dtype=pl.Int64),
            pl.Series("_level0", [b[2] for b in before], dtype=pl.Float64),
        )
        first = pl.int_range(pl.len()).over(group) == 0
        previous = {c: pl.when(first).then(pl.col(f"{c}0")).otherwise(pl.col(c).shift().over(group))
                    for c in ("_status", "_ts", "_level")}  # fmt: skip
        drains = (
            pl.col("_prev_ts").is_not_null() & (pl.col("_ts") > pl.col("_prev_ts"))
            & (pl.col("_status") != "charging") & (pl.col("_level") <= pl.col("_prev_level"))
        ).fill_null(False)  # fmt: skip
        compared = (
            ordered.join(robots, on=group, how="left", maintain_order="left")
            .with_columns(**{f"_prev{c}": e for c, e in previous.items()})
            .with_columns(
                _transition=(pl.col("_prev_status").is_not_null() & (pl.col("_prev_status") != pl.col("_status"))),
                _drop=pl.when(drains).then(pl.col("_prev_level") - pl.col("_level")).otherwise(0.0),
                _hours=pl.when(drains).then((pl.col("_ts") - pl.col("_prev_ts")) / 3.6e9).otherwise(0.0),
            )
        )
        totals = compared.group_by("kafka_topic", "kafka_partition").agg(
            pl.col("_transition").sum(), pl.col("_drop").sum(), pl.col("_hours").sum()
        )
        for topic, partition, transitions, drop, hours in totals.iter_rows():
            state = self.state.partition(topic, partition)
            state.transitions += int(transitions)
            state.drain_pct += float(drop)
            state.drain_hours += float(hours)
        latest = compared.group_by(group, maintain_order=True).agg(pl.col("_ts", "_status", "_level").last())
        for topic, partition, robot, ts, status, level in latest.iter_rows():
            state = self.state.partition(topic, partition)
            state.status[robot] = status
            state.battery[robot] = [ts, level]
