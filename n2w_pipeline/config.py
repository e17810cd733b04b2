"""n2w settings: every knob in one place, read from ``N2W_*`` environment variables.

Defaults describe the reference fleet. ``Settings.from_env()`` is the only reader of
the environment; everything else receives a ``Settings`` value.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

REFERENCE_SHIPS: tuple[str, ...] = (
    "IMO9976903",
    "IMO9976915",
    "IMO9976927",
    "IMO9976939",
    "IMO9986051",
    "IMO9986063",
    "IMO9986087",
    "IMO9986104",
)

REFERENCE_HULLS: dict[str, str] = {
    "H2546": "IMO9976903",
    "H2547": "IMO9976915",
    "H2548": "IMO9976927",
    "H2549": "IMO9976939",
    "H2559": "IMO9986051",
    "H2560": "IMO9986087",
}


EXECUTORS = ("multiprocess", "celery")


class SettingError(ValueError):
    """An ``N2W_*`` variable with a value n2w cannot use; the message names the variable."""


def _int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise SettingError(f"{name}: expected a whole number, got {value!r}") from None


def _float(name: str, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise SettingError(f"{name}: expected a number, got {value!r}") from None


def _postgres_url(name: str, value: str) -> str:
    """``value`` if psycopg can parse it as a connection string (URL or key=value)."""
    from psycopg.conninfo import conninfo_to_dict

    from n2w_pipeline.dsn import mask_secrets, redact

    try:
        conninfo_to_dict(value)
    except Exception as e:  # noqa: BLE001 - psycopg's message may quote the value: masked
        raise SettingError(f"{name}: not a PostgreSQL URL or key=value connection string "
                           f"({mask_secrets(str(e), [value])}): {redact(value)}") from None
    return value


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _pairs(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _split(value):
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise SettingError(f"N2W_HULLS: expected HULL=IMO pairs, got {item!r}")
        out[key.strip()] = val.strip()
    return out


def _flag(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {value!r}")


def _group_pcts(name: str, value: str) -> tuple[tuple[int, float], ...]:
    """`90` (every group) or `90,3=80` (group 3: 80) → ((0, 90.0), (3, 80.0))."""
    out: dict[int, float] = {}
    for item in _split(value):
        group, sep, pct = item.rpartition("=")
        try:
            key, val = (int(group) if sep else 0), float(pct)
        except ValueError:
            raise SettingError(f"{name}: expected PCT or GROUP=PCT items, got {item!r}") from None
        if not 0 <= val <= 100:
            raise SettingError(f"{name}: {item!r} is not a percentage")
        out[key] = val
    return tuple(sorted(out.items()))


PARTITION_INTERVALS = ("week", "month", "quarter")
RETENTION_UNITS = ("day", "week", "month", "year")


def parse_retention(value: str) -> tuple[int, str] | None:
    """`18 months`, `2 years`, `90 days` → (18, "month"); `off`, `none`, `0` → None."""
    text = value.strip().lower()
    if text in ("off", "none", "0", "no", "false"):
        return None
    m = re.fullmatch(r"(\d+)\s*(day|week|month|year)s?", text)
    if not m or int(m.group(1)) < 1:
        raise SettingError(f"N2W_RETENTION: expected e.g. '18 months', '2 years', '90 days' or 'off', "
                         f"got {value!r}")
    return int(m.group(1)), m.group(2)


def parse_days(name: str, value: str) -> int | None:
    """`30` → 30; `off`, `none`, `0` → None (keep everything)."""
    text = value.strip().lower()
    if text in ("off", "none", "0", "no", "false"):
        return None
    if not text.isdigit():
        raise SettingError(f"{name}: expected a number of days or 'off', got {value!r}")
    return int(text)


@dataclass(frozen=True)
class SourceColumns:
    """Column names of the narrow source table."""

    id: str = "id"
    ship_id: str = "ship_id"
    channel: str = "data_channel_id"
    created_time: str = "created_time"
    server_created_time: str = "server_created_time"
    bool_v: str = "bool_v"
    str_v: str = "str_v"
    long_v: str = "long_v"
    double_v: str = "double_v"
    value_format: str = "value_format"


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Field docs double as the configuration table in docs/operating.md."""

    database_url: str | None = None
    """N2W_DATABASE_URL: PostgreSQL URL; unset starts an embedded server under state_dir."""
    source_url: str | None = None
    """N2W_SOURCE_URL: where the narrow table is read (e.g. a replica); unset: N2W_DATABASE_URL."""
    source_primary_url: str | None = None
    """N2W_SOURCE_PRIMARY_URL: the narrow table's primary (writers' server); unset: N2W_SOURCE_URL."""
    source_schema: str = "tenant"
    """N2W_SOURCE_SCHEMA: schema of the narrow table."""
    source_table: str = "tbl_data_timeseries"
    """N2W_SOURCE_TABLE: the narrow table."""
    columns: SourceColumns = field(default_factory=SourceColumns)
    """N2W_COL_<NAME> (e.g. N2W_COL_CHANNEL): source column names."""
    target_schema: str = "tenant"
    """N2W_TARGET_SCHEMA: schema of the wide tables and n2w's own tables."""
    table_pattern: str = "tbl_data_timeseries_{ship_lower}_{group}"
    """N2W_TABLE_PATTERN: wide table name; fields {ship}, {ship_lower}, {group}."""
    ships: tuple[str, ...] = REFERENCE_SHIPS
    """N2W_SHIPS: comma-separated ship ids (the ship partition dimension)."""
    partition_start: str = "2025-01-01-00:00"
    """N2W_PARTITION_START: first hourly partition, YYYY-MM-DD-HH:MM."""
    channel_lists_dir: Path = Path("channel_lists")
    """N2W_CHANNEL_LISTS: folder of channel list files, one per group."""
    migration_dir: Path = Path("migration_data")
    """N2W_MIGRATION_DIR: folder watched for CSV correction files."""
    hulls: Mapping[str, str] = field(default_factory=lambda: dict(REFERENCE_HULLS))
    """N2W_HULLS: hull → IMO map for correction files, HULL=IMO,..."""
    csv_time_offset_hours: float = 0.0
    """N2W_CSV_TIME_OFFSET_HOURS: added to CSV timestamps to reach created_time's clock."""
    correction_workers: int = 2
    """N2W_CORRECTION_WORKERS: connections a large correction file is written on side by side (2: sweep)."""
    state_dir: Path = Path(".n2w")
    """N2W_STATE_DIR: embedded PostgreSQL data and Dagster local state."""
    slice_hours: int = 6
    """N2W_SLICE_HOURS: hours extracted, pivoted and written per transaction (6: `n2w bench sweep`)."""
    pipeline_lanes: int | None = None
    """N2W_PIPELINE_LANES: slices in flight per window; unset → lanes.PIPELINE_LANES (2)."""
    run_hours: int = 168
    """N2W_RUN_HOURS: partitions per backfill run (BackfillPolicy.multi_run)."""
    backfill_ships_per_run: int = 8
    """N2W_BACKFILL_SHIPS_PER_RUN: ships per `n2w backfill` run: blocks of up to 8 neighbouring
    ships × hours whose slices read all their ships at once (one scan of a fleet table's hours,
    on any server and index); 1: a run per ship and range, as the UI cuts a backfill."""
    backfill_nice: int = 10
    """N2W_BACKFILL_NICE: niceness of backfill processes (0-19; 0 leaves it), so that realtime runs
    on the same machine get the CPU first (``priority.py``)."""
    realtime: bool = True
    """N2W_REALTIME: 1/0 — the realtime sensor's default status (RUNNING or STOPPED)."""
    realtime_cursor: str = "id"
    """N2W_REALTIME_CURSOR_COLUMN: arrival order, `id` or `server_created_time` (see N2W_COL_*)."""
    realtime_interval_seconds: int = 2
    """N2W_REALTIME_INTERVAL_SECONDS: minimum seconds between two realtime ticks (daemon loop: 5 s)."""
    realtime_batch_rows: int = 500_000
    """N2W_REALTIME_BATCH_ROWS: narrow rows one tick reads at most (a backlog takes several ticks)."""
    realtime_retry_seconds: float = 10.0
    """N2W_REALTIME_RETRY_SECONDS: first wait before a failed realtime hour is asked for again (doubles)."""
    db_retries: int = 6
    """N2W_DB_RETRIES: attempts of a slice that meets a transient database error (lost connection, …)."""
    db_retry_seconds: float = 1.0
    """N2W_DB_RETRY_SECONDS: first wait between two attempts of a slice; doubles, plus jitter, ≤ 30 s."""
    checks_in_runs: bool = True
    """N2W_CHECKS_IN_RUNS: 1/0 — run the asset checks inside every materialisation."""
    check_min_fill_pct: tuple[tuple[int, float], ...] = ((0, 90.0),)
    """N2W_CHECK_MIN_FILL_PCT: null-fill warning threshold, `90` or per group `90,3=80`."""
    check_min_coverage_pct: tuple[tuple[int, float], ...] = ((0, 95.0),)
    """N2W_CHECK_MIN_COVERAGE_PCT: channel-coverage warning threshold, `95` or `95,2=90`."""
    export_dir: Path | None = None
    """N2W_EXPORT_DIR: Parquet export folder; unset → <N2W_STATE_DIR>/export (export/paths.py)."""
    clickhouse_path: Path | None = None
    """N2W_CLICKHOUSE_PATH: embedded ClickHouse (chDB) data folder; unset → <N2W_STATE_DIR>/clickhouse."""
    clickhouse_url: str | None = None
    """N2W_CLICKHOUSE_URL: an existing ClickHouse server (http[s]://user@host:8123/database); unset → chDB."""
    export_retries: int = 4
    """N2W_EXPORT_RETRIES: attempts of an export step before its run fails (backoff with jitter between)."""
    export_retry_seconds: float = 1.0
    """N2W_EXPORT_RETRY_SECONDS: first wait between attempts; doubles each time, random jitter, ≤ 60 s."""
    partition_interval: str = "month"
    """N2W_PARTITION_INTERVAL: time range of one partition of a wide table: week, month or quarter."""
    retention: tuple[int, str] | None = None
    """N2W_RETENTION: drop wide-table partitions older than this, e.g. `18 months` (unset/off: keep all)."""
    executor: str = "multiprocess"
    """N2W_EXECUTOR: `multiprocess` (Dagster's default, steps on the launching machine) or `celery`."""
    celery_broker: str | None = None
    """N2W_CELERY_BROKER: Celery broker URL, e.g. redis://host:6379/0 (needed with N2W_EXECUTOR=celery)."""
    celery_backend: str | None = None
    """N2W_CELERY_BACKEND: Celery result backend URL; unset: the broker URL."""
    celery_visibility_timeout: int = 3600
    """N2W_CELERY_VISIBILITY_TIMEOUT: seconds before a step taken by a worker that died is redelivered."""
    celery_queue: str = "dagster"
    """N2W_CELERY_QUEUE: Celery queue of the wide-table steps (`n2w worker --queue` defaults to it)."""
    log_dir: Path | None = None
    """N2W_LOG_DIR: log files, one per kind of work and ship (logs.py); unset → <N2W_STATE_DIR>/logs."""
    log_max_mb: int = 100
    """N2W_LOG_MAX_MB: a log file is rotated when it reaches this size."""
    log_backups: int = 30
    """N2W_LOG_BACKUPS: rotated files kept per log file (the oldest is deleted)."""
    instance_retention_days: int | None = 30
    """N2W_INSTANCE_RETENTION_DAYS: days the instance keeps finished runs' logs and ticks (`off`: all)."""
    alert_webhook: str | None = None
    """N2W_ALERT_WEBHOOK: URL that receives a JSON POST for each failed run and failed blocking check."""
    slack_token: str | None = None
    """N2W_SLACK_TOKEN: Slack bot token; with N2W_SLACK_CHANNEL, alerts are posted there too."""
    slack_channel: str | None = None
    """N2W_SLACK_CHANNEL: Slack channel of the alerts, e.g. #n2w-alerts."""
    ui_url: str = "http://127.0.0.1:3000"
    """N2W_UI_URL: the Dagster UI's address, for the run links in alerts and `n2w report`."""

    @property
    def source_qualified(self) -> tuple[str, str]:
        return (self.source_schema, self.source_table)

    def table_name(self, ship: str, group: int) -> str:
        return self.table_pattern.format(ship=ship, ship_lower=ship.lower(), group=group)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        kw: dict[str, object] = {}

        def get(name: str) -> str | None:
            value = env.get(f"N2W_{name}")
            return value if value not in (None, "") else None

        for name in ("database_url", "source_url", "source_primary_url"):
            if (v := get(name.upper())) is not None:
                kw[name] = _postgres_url(f"N2W_{name.upper()}", v)
        for name in ("celery_broker", "celery_backend", "alert_webhook", "slack_token", "slack_channel",
                     "ui_url"):
            if (v := get(name.upper())) is not None:
                kw[name] = v
        if (v := get("EXECUTOR")) is not None:
            if v not in EXECUTORS:
                raise SettingError(f"N2W_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {v!r}")
            kw["executor"] = v
        if kw.get("executor") == "celery" and "celery_broker" not in kw:
            raise SettingError("N2W_EXECUTOR=celery needs N2W_CELERY_BROKER, e.g. redis://host:6379/0")
        for name in ("source_schema", "source_table", "target_schema", "table_pattern",
                     "partition_start", "celery_queue"):
            if (v := get(name.upper())) is not None:
                kw[name] = v
        if "partition_start" in kw:
            try:
                dt.datetime.strptime(str(kw["partition_start"]), "%Y-%m-%d-%H:%M")
            except ValueError:
                raise SettingError(f"N2W_PARTITION_START: expected YYYY-MM-DD-HH:MM, e.g. 2025-01-01-00:00, "
                                   f"got {kw['partition_start']!r}") from None
        if (v := get("SHIPS")) is not None:
            kw["ships"] = _split(v)
        if (v := get("HULLS")) is not None:
            kw["hulls"] = _pairs(v)
        if (v := get("CHANNEL_LISTS")) is not None:
            kw["channel_lists_dir"] = Path(v)
        if (v := get("MIGRATION_DIR")) is not None:
            kw["migration_dir"] = Path(v)
        if (v := get("STATE_DIR")) is not None:
            kw["state_dir"] = Path(v)
        for name in ("export_dir", "clickhouse_path", "log_dir"):
            if (v := get(name.upper())) is not None:
                kw[name] = Path(v)
        if (v := get("CLICKHOUSE_URL")) is not None:
            kw["clickhouse_url"] = v
        if (v := get("EXPORT_RETRY_SECONDS")) is not None:
            kw["export_retry_seconds"] = _float("N2W_EXPORT_RETRY_SECONDS", v)
            if kw["export_retry_seconds"] < 0:
                raise SettingError(f"N2W_EXPORT_RETRY_SECONDS must be >= 0, got {v}")
        for name in ("db_retry_seconds", "realtime_retry_seconds"):
            if (v := get(name.upper())) is not None:
                kw[name] = _float(f"N2W_{name.upper()}", v)
                if not 0 <= kw[name] <= 3600:  # type: ignore[operator]
                    raise SettingError(f"N2W_{name.upper()} must be between 0 and 3600, got {v}")
        if (v := get("CSV_TIME_OFFSET_HOURS")) is not None:
            kw["csv_time_offset_hours"] = _float("N2W_CSV_TIME_OFFSET_HOURS", v)
        if (v := get("REALTIME")) is not None:
            kw["realtime"] = _flag("N2W_REALTIME", v)
        if (v := get("REALTIME_CURSOR_COLUMN")) is not None:
            if v not in ("id", "server_created_time"):
                raise SettingError(f"N2W_REALTIME_CURSOR_COLUMN must be id or server_created_time, got {v!r}")
            kw["realtime_cursor"] = v
        for name in ("slice_hours", "run_hours", "backfill_ships_per_run", "realtime_interval_seconds",
                     "realtime_batch_rows", "correction_workers", "pipeline_lanes", "export_retries",
                     "celery_visibility_timeout", "db_retries", "log_max_mb", "log_backups"):
            if (v := get(name.upper())) is not None:
                kw[name] = _int(f"N2W_{name.upper()}", v)
                if kw[name] < 1:
                    raise SettingError(f"N2W_{name.upper()} must be >= 1, got {v}")
        if (v := get("BACKFILL_NICE")) is not None:
            kw["backfill_nice"] = _int("N2W_BACKFILL_NICE", v)
            if not 0 <= kw["backfill_nice"] <= 19:
                raise SettingError(f"N2W_BACKFILL_NICE must be 0..19, got {v}")
        if (v := get("CHECKS_IN_RUNS")) is not None:
            kw["checks_in_runs"] = v.strip().lower() not in ("0", "false", "no", "off")
        for name in ("check_min_fill_pct", "check_min_coverage_pct"):
            if (v := get(name.upper())) is not None:
                kw[name] = _group_pcts(f"N2W_{name.upper()}", v)
        if (v := get("PARTITION_INTERVAL")) is not None:
            if v.strip().lower() not in PARTITION_INTERVALS:
                raise SettingError(f"N2W_PARTITION_INTERVAL must be one of {', '.join(PARTITION_INTERVALS)}, "
                                 f"got {v!r}")
            kw["partition_interval"] = v.strip().lower()
        if (v := get("RETENTION")) is not None:
            kw["retention"] = parse_retention(v)
        if (v := get("INSTANCE_RETENTION_DAYS")) is not None:
            kw["instance_retention_days"] = parse_days("N2W_INSTANCE_RETENTION_DAYS", v)
        cols = {
            f.name: env[f"N2W_COL_{f.name.upper()}"]
            for f in fields(SourceColumns)
            if env.get(f"N2W_COL_{f.name.upper()}")
        }
        kw["columns"] = SourceColumns(**cols)
        return cls(**kw)  # type: ignore[arg-type]

