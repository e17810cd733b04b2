"""Shared pieces of the ``n2w`` commands: time arguments, progress bar, backfill runner."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping, Sequence

from n2w_pipeline.commands._progress import Bar
from n2w_pipeline.config import Settings
from n2w_pipeline.hours import HOUR, floor_hour, hour_ranges, hours_between

PROGRESS_LOGGER = "n2w.progress"


def parse_time(text: str) -> dt.datetime:
    """``2025-03-01``, ``2025-03-01T06:00`` or ``2025-03-01 06:00`` (naive, created_time clock)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date/time: {text!r} (use 2025-03-01 or 2025-03-01T06:00)"
        ) from None
    if value.tzinfo is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a naive time on the created_time clock")
    return value


def add_window_args(p: argparse.ArgumentParser) -> None:
    """--ship (repeatable), --start and --end: the ships × hours a command works on."""
    p.add_argument("--ship", action="append", dest="ships", metavar="SHIP",
                   help="ship id (repeatable); default: every configured ship")
    p.add_argument("--start", type=parse_time, required=True, help="first hour, e.g. 2025-03-01")
    p.add_argument("--end", type=parse_time, required=True,
                   help="end of the window (exclusive), e.g. 2025-03-02")


def resolve_window(
    args: argparse.Namespace, settings: Settings, command: str
) -> tuple[list[str], dt.datetime, dt.datetime]:
    """Validated (ships, start, end) from ``add_window_args``; exits with a message if bad."""
    ships = args.ships or list(settings.ships)
    unknown = [s for s in ships if s not in settings.ships]
    if unknown:
        raise SystemExit(f"n2w {command}: unknown ship(s) {unknown}; configured: {list(settings.ships)}")
    start, end = floor_hour(args.start), floor_hour(args.end)
    if end <= start:
        raise SystemExit(f"n2w {command}: --end must be at least one hour after --start")
    return ships, start, end


def require_narrow_table(settings: Settings, command: str) -> None:
    """Stop with one line before any Dagster run when the narrow table is not there."""
    import psycopg
    from psycopg import sql

    from n2w_pipeline.database import redact, source_url

    url = source_url(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                           (sql.Identifier(*settings.source_qualified).as_string(conn),)).fetchone()
    if not row or not row[0]:
        where = "N2W_SOURCE_URL" if settings.source_url else "N2W_DATABASE_URL"
        raise SystemExit(
            f"n2w {command}: the narrow table {settings.source_schema}.{settings.source_table} does not "
            f"exist on {redact(url)} (set N2W_SOURCE_SCHEMA / N2W_SOURCE_TABLE, or {where}); on the "
            "embedded database `n2w generate` makes a synthetic one")


ALLOW_EXTERNAL = "--allow-external"


def add_allow_external(p: argparse.ArgumentParser) -> None:
    p.add_argument(ALLOW_EXTERNAL, action="store_true",
                   help="also write synthetic rows when the narrow table is on your own server "
                   "(N2W_DATABASE_URL / N2W_SOURCE_URL set). Without it the command writes only into "
                   "n2w's embedded PostgreSQL and refuses, writing nothing, anywhere else")


def writable_source(settings: Settings, command: str, allow_external: bool = False) -> str:
    """The narrow table's URL for the commands that write synthetic narrow rows (generate,
    demo): the embedded database, or — only with ``--allow-external`` — ``N2W_SOURCE_URL`` /
    ``N2W_DATABASE_URL``. Refuses (``SystemExit``, nothing written) an external database
    without the flag, and a read-only server (a replica) in any case."""
    import psycopg

    from n2w_pipeline.database import is_embedded, redact, source_url

    if not is_embedded(settings) and not allow_external:
        name = "N2W_SOURCE_URL" if settings.source_url else "N2W_DATABASE_URL"
        url = settings.source_url or settings.database_url or ""
        raise SystemExit(
            f"n2w {command}: not writing synthetic rows into {redact(url)} ({name}): that is your "
            f"database, not n2w's embedded one. Unset {name} to use the embedded PostgreSQL, or pass "
            f"{ALLOW_EXTERNAL} if synthetic rows under the configured ship ids belong there")
    url = source_url(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'").fetchone()
    if row and row[0]:
        raise SystemExit(
            f"n2w {command}: the narrow table's server {redact(url)} (N2W_SOURCE_URL) is read-only "
            f"(a replica?); {command} writes narrow rows: point N2W_SOURCE_URL at the primary for it")
    return url


class ProgressBar(logging.Handler):
    """Draws the wide assets' progress records (logger ``n2w.progress``) as a bar (``_progress.Bar``:
    redrawn in place on a terminal, one line per step elsewhere, never the same line twice)."""

    def __init__(self, stream=None) -> None:  # noqa: ANN001
        super().__init__()
        self.bar = Bar(stream)

    def emit(self, record: logging.LogRecord) -> None:
        done = getattr(record, "n2w_done", None)
        total = getattr(record, "n2w_total", None)
        if done is None or not total:
            return
        self.bar.draw(done, total, "ship-hours", f"{record.n2w_rows:,} rows  {record.n2w_rate:,.0f} rows/s  "
                      f"ETA {record.n2w_eta:,.0f} s")

    def line(self, text: str) -> None:
        self.bar.line(text)


Run = tuple[tuple[str, ...], dt.datetime, dt.datetime]
"""ships (consecutive in N2W_SHIPS), start, end (exclusive): one Dagster range run."""


def plan_runs(
    ships: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    run_hours: int,
    done: Mapping[str, set[dt.datetime]] | None = None,
    order: Sequence[str] | None = None,
    ships_per_run: int = 8,
) -> list[Run]:
    """The runs of a backfill: the (ship, hour) partitions of ``ships`` × [start, end) not
    in ``done[ship]``, as blocks of up to ``ships_per_run`` ships (N2W_BACKFILL_SHIPS_PER_RUN)
    × contiguous hours of at most ``run_hours`` partitions each, in time order. On a fleet
    table a block's slices read each hour's pages once for all its ships, whatever the
    server and indexes; on PostgreSQL 18 (skip scan) a run per ship measured the same within
    the noise (`n2w bench backfill --fleet`, two idle runs of 2026-12-03: 57.0 and 40.8 s in
    blocks, 45.6 and 49.5 s a run per ship; docs/backfills.md).

    A block's ships are consecutive in ``order`` (the ship dimension's order, N2W_SHIPS;
    default ``ships``), because a Dagster range run from (first ship, first hour) to
    (last ship, last hour) covers every ship in between. Hours that the same ships still
    need form one stretch; a stretch of k ships is cut into equal runs of at most
    ``run_hours // k`` hours, so the fleet's ships share each read (``fleet_slices``)
    while a run stays as big as a one-ship run of ``run_hours`` hours.
    """
    position = {ship: i for i, ship in enumerate(order or ships)}
    wanted = sorted(set(ships), key=position.__getitem__)
    skip = done or {}
    stretches: list[tuple[tuple[str, ...], list[dt.datetime]]] = []
    for hour in hours_between(start, end):
        need = tuple(s for s in wanted if hour not in skip.get(s, ()))
        if stretches and stretches[-1][0] == need and stretches[-1][1][-1] + HOUR == hour:
            stretches[-1][1].append(hour)
        elif need:
            stretches.append((need, [hour]))
    runs: list[Run] = []
    for need, hours in stretches:
        for block in _consecutive(need, position, max(1, min(run_hours, ships_per_run))):
            per_run = max(1, run_hours // len(block))
            count = -(-len(hours) // per_run)
            size = -(-len(hours) // count)  # equal runs: two at a time finish together
            runs += [(block, a, b) for a, b in hour_ranges(hours, size)]
    return sorted(runs, key=lambda r: (r[1], position[r[0][0]]))


def _consecutive(ships: Sequence[str], position: Mapping[str, int], most: int) -> list[tuple[str, ...]]:
    """``ships`` (in ``position`` order) cut where a ship of the order is missing, and
    into pieces of at most ``most`` ships."""
    blocks: list[list[str]] = []
    for ship in ships:
        if blocks and position[ship] == position[blocks[-1][-1]] + 1 and len(blocks[-1]) < most:
            blocks[-1].append(ship)
        else:
            blocks.append([ship])
    return [tuple(b) for b in blocks]


def run_ship_hours(run: Run) -> float:
    return len(run[0]) * (run[2] - run[1]).total_seconds() / 3600


def materialized_hours(
    instance, settings: Settings, asset_keys: Sequence, ships: Sequence[str]  # noqa: ANN001
) -> dict[str, set[dt.datetime]]:
    """(ship → hours) whose partitions every one of ``asset_keys`` has materialised."""
    from n2w_pipeline.defs.partitions import split_key, wide_partitions

    partitions = wide_partitions(settings)
    common: set[str] | None = None
    for key in asset_keys:
        keys = set(instance.get_materialized_partitions(key))
        common = keys if common is None else common & keys
    out: dict[str, set[dt.datetime]] = {ship: set() for ship in ships}
    for key in common or ():
        ship, hour = split_key(partitions, key)
        if ship in out:
            out[ship].add(hour)
    return out


class BackfillProgress:
    """Sums the per-slice progress records of every run (in this process or in worker
    processes) into one bar: ship-hours done, narrow rows, rows/s and ETA."""

    def __init__(self, total_hours: int, quiet: bool, stream=None) -> None:  # noqa: ANN001
        self.total_hours = total_hours
        self.t0 = time.perf_counter()
        self.finished_hours = 0.0
        self.finished_rows = 0
        self.active: dict[str, tuple[float, int]] = {}
        self.finished: set[str] = set()
        self.bar = None if quiet else ProgressBar(stream)
        self.lock = threading.Lock()

    def update(self, task: str, done: float, rows: int) -> None:
        with self.lock:
            if task in self.finished:  # a late record of a run already counted in full
                return
            self.active[task] = (done, rows)
            self._draw()

    def finish(self, task: str, hours: float, rows: int, line: str | None = None) -> None:
        """A run ended: its hours and rows count in full; ``line`` is printed above the bar."""
        with self.lock:
            self.finished.add(task)
            self.active.pop(task, None)
            self.finished_hours += hours
            self.finished_rows += rows
            if line and self.bar is not None:
                self.bar.line(line)
            self._draw()

    def _draw(self) -> None:
        if self.bar is None:
            return
        done = self.finished_hours + sum(d for d, _ in self.active.values())
        rows = self.finished_rows + sum(r for _, r in self.active.values())
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        eta = elapsed / done * (self.total_hours - done) if done else 0.0
        record = logging.LogRecord(PROGRESS_LOGGER, logging.INFO, "", 0, "progress", None, None)
        record.__dict__.update(n2w_done=done, n2w_total=self.total_hours, n2w_rows=rows,
                               n2w_rate=rows / elapsed, n2w_eta=eta)
        self.bar.emit(record)


class _TaskProgress(logging.Handler):
    """Forwards one run's ``n2w.progress`` records to a sink ``(task, done, rows)``."""

    def __init__(self, task: str, sink) -> None:  # noqa: ANN001
        super().__init__()
        self.task = task
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        done = getattr(record, "n2w_done", None)
        if done is not None:
            self.sink(self.task, float(done), int(record.n2w_rows))


QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""Run config of backfill runs: the bar shows progress, Dagster's lines go to the log files
(``logs.dagster_console()`` turns the console on for ``n2w --verbose``)."""


def run_line(summary: dict) -> str:
    """The line printed when a run of `n2w backfill` finishes."""
    md = next(iter(summary["assets"].values()), {})
    rows, secs = md.get("narrow_rows_read", 0), summary["seconds"]
    run = (summary["ships"], summary["start"], summary["end"])
    return (f"run {summary['run_id'][:8]} {task_name(run)}: {rows:,} rows in {secs:.1f} s "
            f"({rows / secs if secs else 0:,.0f} rows/s)")


class BackfillFailed(Exception):
    """A run of `n2w backfill` failed; the message says which and why, in one line."""


def task_name(run: Run) -> str:
    """The progress bar's key of a run, and how messages name it."""
    ships, start, end = run
    who = ships[0] if len(ships) == 1 else f"{ships[0]}..{ships[-1]} ({len(ships)} ships)"
    return f"{who} {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}"


def run_tags(run: Run) -> dict[str, str]:
    """Tags of a backfill run: its partition range, (first ship, first hour) to (last
    ship, last hour); Dagster's range covers every ship in between × every hour."""
    from n2w_pipeline.defs.partitions import partition_key

    ships, start, stop = run
    return {
        "dagster/asset_partition_range_start": partition_key(ships[0], start),
        "dagster/asset_partition_range_end": partition_key(ships[-1], stop - HOUR),
        "n2w/launched_by": "n2w backfill",
        "n2w/kind": "backfill",
    }


def run_summary(run: Run, result, t0: float) -> dict:  # noqa: ANN001 - a Dagster execution result
    md: dict[str, dict] = {}
    for m in result.asset_materializations_for_node("narrow_to_wide"):
        md.setdefault(m.asset_key.to_user_string(), {k: v.value for k, v in m.metadata.items()})
    return {"ships": run[0], "start": run[1], "end": run[2], "run_id": result.run_id,
            "seconds": time.perf_counter() - t0, "assets": md}


def _materialize_run(settings: Settings, run: Run, url: str) -> dict:
    """One Dagster run of the wide assets for ``run``, in this process (default executor)."""
    import dagster as dg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.defs.resources import N2WDatabase
    from n2w_pipeline.defs.wide_assets import build_wide_assets
    from n2w_pipeline.logs import dagster_console
    from n2w_pipeline.retries import with_retries

    assets = build_wide_assets(settings, load_catalog(settings.channel_lists_dir))
    t0 = time.perf_counter()

    def once():  # noqa: ANN202 - a Dagster execution result
        with dg.DagsterInstance.get() as instance:
            return dg.materialize(
                [assets],
                instance=instance,
                resources={"n2w_db": N2WDatabase(url=url, source_url=settings.source_url)},
                tags=run_tags(run),
                raise_on_error=True,
                run_config=dagster_console(),
            )

    # Slices retry transient errors themselves; what escapes a run transiently (the Dagster
    # instance's database gone for longer than dagster-postgres retries, ~6 s) is a new run
    # of the same hours: idempotent, the committed slices are rewritten unchanged.
    result = with_retries(settings, f"run {task_name(run)}", once, logging.getLogger("n2w.backfill"))
    return run_summary(run, result, t0)


_worker_queue = None


def _worker_init(env: dict[str, str], queue) -> None:  # noqa: ANN001
    """Worker process: the Dagster env, and progress records sent to the parent."""
    import os

    global _worker_queue
    os.environ.update(env)
    _worker_queue = queue
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    logging.getLogger(PROGRESS_LOGGER).propagate = False


def _worker_run(settings: Settings, run: Run, url: str) -> dict:
    task = task_name(run)
    plog = logging.getLogger(PROGRESS_LOGGER)
    handler = _TaskProgress(task, lambda t, d, r: _worker_queue.put((t, d, r)))  # type: ignore[union-attr]
    plog.addHandler(handler)
    try:
        return _materialize_run(settings, run, url)
    finally:
        plog.removeHandler(handler)


def run_backfill(
    settings: Settings,
    ships: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    quiet: bool = False,
    parallel: int | None = 1,
    resume: bool = False,
) -> list[dict]:
    """Materialise the wide assets for ``ships`` × [start, end) through Dagster, in runs
    of at most ``settings.run_hours`` partitions (``plan_runs``: blocks of up to
    N2W_BACKFILL_SHIPS_PER_RUN neighbouring ships × hours that share each read),
    recorded in the n2w instance.

    ``resume``: skip the (ship, hour) partitions every wide asset has already
    materialised (a run that failed or was killed materialised none of its partitions,
    so they run again). ``parallel``: runs in that many worker processes at once, capped
    by the instance's pool limit for ``n2w_database`` (each run's step holds a pool slot,
    so more processes would only wait); None: 1, or with Celery the pool limit.
    With ``N2W_EXECUTOR=celery`` each run's step executes on a Celery worker
    (``_celery_backfill``). Returns one summary per run, in plan order: ships, window,
    seconds, narrow rows and metadata. The first failed run raises after the runs already
    started have finished (``BackfillFailed`` with the run's error under Celery).
    """
    import dagster as dg

    from n2w_pipeline.channels import load_catalog
    from n2w_pipeline.database import require_reachable
    from n2w_pipeline.defs.wide_assets import wide_asset_key
    from n2w_pipeline.instance import apply_dagster_env, sync_pool_limit

    celery = settings.executor == "celery"
    if celery:
        from n2w_pipeline.commands._celery_backfill import check_ready, run_celery

        check_ready(settings)
    env = apply_dagster_env(settings)
    require_reachable(env["N2W_DAGSTER_PG_URL"], "the Dagster instance's database (N2W_DAGSTER_PG_URL)")
    url = env["N2W_DATABASE_URL"]
    catalog = load_catalog(settings.channel_lists_dir)
    with dg.DagsterInstance.get() as instance:
        done = None
        if resume:
            done = materialized_hours(instance, settings, [wide_asset_key(g) for g in catalog.groups], ships)
        limit = sync_pool_limit(instance)
    runs = plan_runs(ships, start, end, settings.run_hours, done, settings.ships,
                     settings.backfill_ships_per_run)
    if parallel is None:
        parallel = (limit or 1) if celery else 1
    if limit:
        parallel = min(parallel, limit)
    parallel = max(1, min(parallel, len(runs)))
    progress = BackfillProgress(int(sum(run_ship_hours(r) for r in runs)), quiet)
    summaries: dict[Run, dict] = {}

    def finished(run: Run, summary: dict) -> None:
        summaries[run] = summary
        rows = next(iter(summary["assets"].values()), {}).get("narrow_rows_read", 0)
        progress.finish(task_name(run), run_ship_hours(run), rows, run_line(summary))

    if celery:
        run_celery(runs, parallel, progress, finished)
    elif parallel == 1:
        plog = logging.getLogger(PROGRESS_LOGGER)
        plog.setLevel(logging.INFO)
        plog.propagate = False
        for run in runs:
            handler = _TaskProgress(task_name(run), progress.update)
            plog.addHandler(handler)
            try:
                finished(run, _materialize_run(settings, run, url))
            finally:
                plog.removeHandler(handler)
    else:
        _run_parallel(settings, runs, url, env, parallel, progress, finished)
    return [summaries[r] for r in runs if r in summaries]


def _run_parallel(settings, runs, url, env, parallel, progress, finished) -> None:  # noqa: ANN001
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    queue = ctx.Manager().Queue()
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                task, done, rows = queue.get(timeout=0.2)
            except Exception:  # noqa: BLE001 - queue.Empty, or the manager gone at exit
                continue
            progress.update(task, done, rows)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    error: BaseException | None = None
    try:
        with ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_worker_init,
                                 initargs=(env, queue)) as pool:
            futures = {pool.submit(_worker_run, settings, run, url): run for run in runs}
            for fut in as_completed(futures):
                try:
                    finished(futures[fut], fut.result())
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    if error is None:
                        error = exc
                        for f in futures:
                            f.cancel()
    finally:
        stop.set()
        reader.join(timeout=2)
    if error is not None:
        raise error
