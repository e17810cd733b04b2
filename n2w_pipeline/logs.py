"""Log files: one per kind of work and ship under ``N2W_LOG_DIR``, rotated by size, shared by
every process that writes them.

Layout: ``<log dir>/<kind>/<SHIP>.log`` for the work of one ship, ``<kind>/fleet.log`` for
work that is not about one ship (a realtime run of several ships, retention, a command's own
lines). Kinds: backfill, realtime, corrections, export, rollups, retention, checks, other.

Who writes them:

* every Dagster run on n2w's instance (in-process, run workers, Celery workers): the instance's
  ``python_logs.dagster_handler_config`` (dagster.yaml) installs ``RunLogFiles``, which routes each
  run's lines — Dagster's events and the assets' own logs — by the run's tags (kind and ship);
* every ``n2w`` command: ``setup_cli_logging`` sends Python logging there (Dagster's console
  output stays off the terminal unless ``--verbose``).

Rotation is ``concurrent_log_handler.ConcurrentRotatingFileHandler``: each write and each
rollover happens under an exclusive lock on a lock file beside the log, and a process that
finds the file rotated under it reopens it, so several processes (runs in parallel, the daemon,
Celery workers) append to one file without losing or interleaving lines (the standard library's
RotatingFileHandler is not safe across processes). ``N2W_LOG_MAX_MB`` (100) ×
``N2W_LOG_BACKUPS`` (30) bound each file's history.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

from n2w_pipeline.config import Settings

KINDS = ("backfill", "realtime", "corrections", "export", "rollups", "retention", "checks", "other")
KIND_TAG = "n2w/kind"
"""Run tag naming the kind of work explicitly (otherwise it is read from the run's tags/steps)."""
FLEET = "fleet"
VERBOSE_ENV = "N2W_CLI_VERBOSE"
"""Set to 1 by `n2w --verbose` (inherited by the processes it spawns): Dagster's console on."""
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

# Dagster warns (BetaWarning) each time a run reads dagster.yaml's handler config: n2w's own config.
warnings.filterwarnings("ignore", message="Handling yaml-defined logging configuration")

_SHIP_WORD = re.compile(r"^[A-Za-z][\w.-]*$")
_files: dict[Path, logging.Handler] = {}
_files_lock = threading.Lock()


def log_dir(settings: Settings) -> Path:
    return settings.log_dir if settings.log_dir is not None else settings.state_dir / "logs"


def log_file(settings: Settings, kind: str, ship: str | None = None) -> Path:
    """``<log dir>/<kind>/<ship or fleet>.log``."""
    name = ship if ship and _SHIP_WORD.match(ship) else FLEET
    return log_dir(settings) / (kind if kind in KINDS else "other") / f"{name}.log"


def kind_of(tags: Mapping[str, str], job_name: str | None = None, step_key: str | None = None) -> str:
    """The kind of work of a run, from its tags, else its step or job name."""
    if tags.get(KIND_TAG) in KINDS:
        return tags[KIND_TAG]
    if "n2w/realtime" in tags or tags.get("dagster/sensor_name") == "narrow_realtime":
        return "realtime"
    if "n2w/sha256" in tags:
        return "corrections"
    if "n2w/export" in tags or tags.get("n2w/launched_by") == "n2w export":
        return "export"
    name = f"{step_key or ''} {job_name or ''}".lower()
    for word, kind in (("correction", "corrections"), ("export", "export"), ("rollup", "rollups"),
                       ("retention", "retention"), ("check", "checks"), ("narrow_to_wide", "backfill")):
        if word in name:
            return kind
    return "backfill" if "dagster/backfill" in tags or "n2w/launched_by" in tags else "other"


def ship_of(tags: Mapping[str, str], ships: tuple[str, ...] = ()) -> str | None:
    """The one ship a run works on, from its partition tags; None for several or none."""
    if tags.get("n2w/ship"):
        return tags["n2w/ship"]
    if tags.get("dagster/partition/ship"):
        return tags["dagster/partition/ship"]
    keys = [tags.get("dagster/partition"), tags.get("dagster/asset_partition_range_start"),
            tags.get("dagster/asset_partition_range_end")]
    found = {ship_in_key(k, ships) for k in keys if k}
    if not found and tags.get("n2w/realtime_ships"):
        found = set(tags["n2w/realtime_ships"].split(","))
    return found.pop() if len(found) == 1 and None not in found else None


def ship_in_key(key: str, ships: tuple[str, ...]) -> str | None:
    """The ship part of a multi-partition key such as ``2025-03-01-00:00|IMO9976903``."""
    parts = key.split("|")
    for part in parts:
        if part in ships:
            return part
    words = [p for p in parts if not p[:1].isdigit()]
    return words[0] if len(parts) > 1 and len(words) == 1 else None


def rotating_file(path: Path, max_bytes: int, backups: int) -> logging.Handler:
    """The process's one multi-process-safe rotating handler of ``path``."""
    from concurrent_log_handler import ConcurrentRotatingFileHandler

    with _files_lock:
        handler = _files.get(path)
        if handler is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = ConcurrentRotatingFileHandler(str(path), maxBytes=max_bytes, backupCount=backups,
                                                    encoding="utf-8")
            handler.setFormatter(logging.Formatter(FORMAT))
            _files[path] = handler
        return handler


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError:  # a bad N2W_* value is reported by the command itself; keep logging
        return Settings()


class RunLogFiles(logging.Handler):
    """Writes each record into the log file of its kind of work and ship.

    Dagster records carry their run's tags (``record.dagster_meta``); other records go to
    ``default_kind``'s fleet file (or the file of ``record.n2w_ship`` when a caller gives one).
    Dagster builds this handler anew for every run from dagster.yaml; the files themselves are
    opened once per process (``rotating_file``).
    """

    def __init__(self, level: int | str = logging.DEBUG, default_kind: str = "other") -> None:
        from n2w_pipeline.dsn import MaskSecretsFilter

        super().__init__(level)
        self.default_kind = default_kind
        self.settings = _settings()
        self.addFilter(MaskSecretsFilter())  # no password in a log file, whatever logs it

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("n2w.progress"):  # the bar's records: the run log has the line
            return
        meta = getattr(record, "dagster_meta", None)
        if meta:
            tags = meta.get("job_tags") or {}
            kind = kind_of(tags, meta.get("job_name"), meta.get("step_key"))
            ship = ship_of(tags, self.settings.ships)
        else:
            kind, ship = self.default_kind, getattr(record, "n2w_ship", None)
        s = self.settings
        try:
            target = rotating_file(log_file(s, kind, ship).resolve(), s.log_max_mb * 1024 * 1024,
                                   s.log_backups)
        except OSError:
            self.handleError(record)
            return
        target.handle(record)


class _NotDagster(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("dagster")


def setup_cli_logging(command: str, verbose: bool) -> None:
    """Logging of an ``n2w`` command: everything into the log files (kind from the command);
    on the terminal only errors of n2w itself, or every line with ``--verbose``."""
    kind = {"backfill": "backfill", "demo": "backfill", "corrections": "corrections",
            "export": "export", "storage": "retention", "check": "checks"}.get(command, "other")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):  # a second call in one process (tests) replaces the first
        if getattr(h, "n2w_cli", False):
            root.removeHandler(h)
    files = RunLogFiles(logging.DEBUG if verbose else logging.INFO, default_kind=kind)
    term = logging.StreamHandler(sys.stderr)
    term.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbose:
        term.setLevel(logging.DEBUG)
        os.environ[VERBOSE_ENV] = "1"
    else:
        term.setLevel(logging.ERROR)
        term.addFilter(_NotDagster())
        os.environ.pop(VERBOSE_ENV, None)
    for h in (files, term):
        h.n2w_cli = True  # type: ignore[attr-defined]
        root.addHandler(h)
    logging.captureWarnings(True)  # Dagster's beta/preview warnings: into the file, not the terminal


def dagster_console() -> dict:
    """Run config of the runs an ``n2w`` command starts: Dagster's console logger is silent
    (its lines are in the log files and the UI) unless ``--verbose``."""
    level = "DEBUG" if os.environ.get(VERBOSE_ENV) == "1" else "CRITICAL"
    return {"loggers": {"console": {"config": {"log_level": level}}}}
