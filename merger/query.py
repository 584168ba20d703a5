"""DuckDB over the stored files: one view per domain that counts every row once, and its companions.

For each domain the view ``<domain>`` reads, for every period, the coarsest merged file that is up to
date (week, else day, else hour), plus the minute files no chosen file holds, de-duplicated by Kafka
position (a replay can leave a row in two minute files). Minute and merged files may coexist.
Beside it: ``<domain>_dlq`` (the DLQ records, chosen the same way), ``<domain>_stats_hour|day|week``
(statistics per period), ``<domain>_complete`` (only rows of periods with a completeness marker) and
the table ``fms_complete`` (domain, grain, period, period_start, period_end) listing the markers.

``python -m merger.query --sql "SELECT count(*) FROM robot_status"`` runs a query (S3/GCS files are
mirrored into ``--cache`` first, as DuckDB's httpfs extension cannot be downloaded everywhere);
``python -m merger.query --emit-sql views.sql`` writes a script for the ``duckdb`` CLI that reads
the files in place (``s3://`` / ``gs://`` URLs with httpfs, or local paths).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb

from domains import DOMAINS
from domains.dlq import dlq_root
from merger.catalog import DomainCatalog
from merger.complete import markers
from merger.periods import Calendar, Grain, Period, children, file_key, period_of
from storage.base import ObjectStore
from storage.factory import StorageConfig, open_store

POSITION = "kafka_topic, kafka_partition, kafka_offset, item_index"


def select_files(catalog: DomainCatalog) -> tuple[list[str], list[str]]:
    """(merged file keys, minute file keys) that together hold every stored row once.

    Per period the coarsest up-to-date merged file; an outdated one is replaced by its children,
    down to the hour, where an outdated hour file is used with the minute files it lacks (minute
    files are only deleted once an hour file holds them, so an outdated hour file plus its missing
    minutes is complete).
    """
    chosen: list[Period] = []
    extra: list[str] = []

    def visit(period: Period) -> None:
        exists = period.name in catalog.merged[period.grain]
        if exists and catalog.up_to_date(period):
            chosen.append(period)
        elif period.grain is Grain.HOUR:
            manifest = catalog.manifest(period) if exists else None
            if manifest is not None:
                chosen.append(period)
                extra.extend(k for k, size in catalog.minutes_in(period).items() if manifest.leaves.get(k) != size)
        else:
            for child in children(period, catalog.calendar):
                visit(child)

    weeks = {period_of(m.start, Grain.WEEK, catalog.calendar) for m, _ in catalog.minutes.values()}
    weeks |= {period_of(p.start, Grain.WEEK, catalog.calendar) for g in catalog.merged.values() for p in g.values()}
    for week in sorted(weeks):
        visit(week)
    minutes = sorted(
        {key for key, (minute, _) in catalog.minutes.items() if not any(c.contains(minute) for c in chosen)}
        | set(extra)
    )
    return [file_key(catalog.root, p) for p in sorted(chosen)], minutes


def _list_sql(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def view_sql(domain: str, merged: list[str], minutes: list[str]) -> str:
    """``CREATE VIEW <domain>`` over the given file paths/URLs."""
    parts = []
    if merged:
        parts.append(f"SELECT * FROM read_parquet({_list_sql(merged)}, union_by_name = true)")
    if minutes:
        parts.append(
            f"SELECT * FROM read_parquet({_list_sql(minutes)}, union_by_name = true) "
            f"QUALIFY row_number() OVER (PARTITION BY {POSITION} ORDER BY collected_at) = 1"
        )
    if not parts:
        return f"-- {domain}: no files yet"
    body = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
    return f"CREATE OR REPLACE VIEW {domain} AS {body};"


def complete_periods(store: ObjectStore, domain: str, calendar: Calendar, facts: DomainCatalog) -> list[Period]:
    """Periods with a completeness marker whose merged file still holds everything stored for them
    (a marker is withdrawn at the next merge after late data; until then late minute files show here)."""
    out: list[Period] = []
    for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
        for period in markers(store, domain, grain, calendar).values():
            if not facts.minutes_in(period) or facts.up_to_date(period):
                out.append(period)
    return sorted(out)


def complete_sql(rows: list[tuple[str, Period]]) -> str:
    """``CREATE TABLE fms_complete`` listing the complete periods."""
    values = ", ".join(
        f"('{d}', '{p.grain.folder}', '{p.name}', "
        f"TIMESTAMPTZ '{p.start.isoformat()}', TIMESTAMPTZ '{p.end.isoformat()}')"
        for d, p in rows
    )
    columns = "domain VARCHAR, grain VARCHAR, period VARCHAR, period_start TIMESTAMPTZ, period_end TIMESTAMPTZ"
    body = f"INSERT INTO fms_complete VALUES {values};" if rows else ""
    return f"CREATE OR REPLACE TABLE fms_complete ({columns}); {body}"


def build_views(store: ObjectStore, calendar: Calendar, locate: Callable[[str], str]) -> list[str]:
    """The ``CREATE`` statements of every view; ``locate`` turns an object key into a path/URL."""
    statements = []
    complete: list[tuple[str, Period]] = []
    for name in DOMAINS:
        facts = DomainCatalog.load(store, name, calendar)
        merged, minutes = select_files(facts)
        statements.append(view_sql(name, [locate(k) for k in merged], [locate(k) for k in minutes]))
        merged, minutes = select_files(DomainCatalog.load(store, dlq_root(name), calendar))
        statements.append(view_sql(f"{name}_dlq", [locate(k) for k in merged], [locate(k) for k in minutes]))
        for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
            keys = sorted(o.key for o in store.list(f"{name}/stats/{grain.folder}/") if o.key.endswith(".parquet"))
            view = f"{name}_stats_{grain.folder}"
            statements.append(
                f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet({_list_sql([locate(k) for k in keys])});"
                if keys else f"-- {view}: no statistics yet"
            )
        complete += [(name, p) for p in complete_periods(store, name, calendar, facts)]
    statements.append(complete_sql(complete))
    for name in DOMAINS:
        if any(s.startswith(f"CREATE OR REPLACE VIEW {name} AS") for s in statements):
            statements.append(
                f"CREATE OR REPLACE VIEW {name}_complete AS SELECT f.* FROM {name} f WHERE EXISTS ("
                f"SELECT 1 FROM fms_complete c WHERE c.domain = '{name}' "
                f"AND f.timestamp >= c.period_start AND f.timestamp < c.period_end);"
            )
    return statements


def mirror(store: ObjectStore, cache: Path) -> Callable[[str], str]:
    """A locator that downloads each object into ``cache`` once (skipped when size matches)."""
    sizes = {o.key: o.size for o in store.list("")}

    def locate(key: str) -> str:
        path = cache / key
        if not path.exists() or path.stat().st_size != sizes.get(key, -1):
            path.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, str(path))
        return str(path)

    return locate


def url_locator(config: StorageConfig) -> Callable[[str], str]:
    """Where the ``duckdb`` CLI finds an object in place."""
    if config.backend == "local":
        root = Path(config.local_dir).resolve() / config.bucket
        return lambda key: str(root / key)
    scheme = "s3" if config.backend == "minio" else "gs"
    return lambda key: f"{scheme}://{config.bucket}/{key}"


def httpfs_preamble(config: StorageConfig) -> str:
    """Settings the ``duckdb`` CLI needs to read MinIO/S3 or GCS in place."""
    if config.backend == "minio":
        return (
            "INSTALL httpfs; LOAD httpfs;\n"
            f"SET s3_endpoint = '{config.minio_endpoint}';\n"
            f"SET s3_use_ssl = {'true' if config.minio_secure else 'false'};\n"
            "SET s3_url_style = 'path';\n"
            "SET s3_access_key_id = getenv('MINIO_ACCESS_KEY');\n"
            "SET s3_secret_access_key = getenv('MINIO_SECRET_KEY');\n"
        )
    if config.backend == "gcs":
        return (
            "INSTALL httpfs; LOAD httpfs;\n"
            "-- GCS through its S3-compatible API with an HMAC key:\n"
            "CREATE SECRET (TYPE gcs, KEY_ID getenv('GCS_HMAC_KEY_ID'), SECRET getenv('GCS_HMAC_SECRET'));\n"
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m merger.query", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sql", help="query to run against the views (prints the result)")
    parser.add_argument("--emit-sql", type=Path, help="write a view script for the duckdb CLI to this file")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(".fms-query-cache"),
        help="local mirror of S3/GCS files for --sql (default .fms-query-cache)",
    )
    args = parser.parse_args(argv)
    config = StorageConfig.from_env(os.environ)
    calendar = Calendar.of(os.environ.get("PARTITION_TIMEZONE", "UTC"), os.environ.get("WEEK_START", "sunday"))
    store = open_store(config)
    if args.emit_sql:
        views = build_views(store, calendar, url_locator(config))
        args.emit_sql.write_text(httpfs_preamble(config) + "\n".join(views) + "\n")
        print(f"wrote {args.emit_sql}: run `duckdb -init {args.emit_sql}`")
    if args.sql:
        locate = url_locator(config) if config.backend == "local" else mirror(store, args.cache)
        con = duckdb.connect()
        for statement in build_views(store, calendar, locate):
            if statement.startswith("CREATE"):
                con.execute(statement)
        con.sql(args.sql).show(max_width=200)
    if not args.sql and not args.emit_sql:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
