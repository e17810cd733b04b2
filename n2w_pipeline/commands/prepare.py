"""``n2w prepare``: build the indexes n2w needs on the narrow table, once, without locking it."""

from __future__ import annotations

import argparse
import sys
import time

from n2w_pipeline.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="build the narrow-table indexes n2w needs (once; no table lock, with progress)",
        description="Check the narrow table for the two indexes n2w needs beyond the fleet's "
        "own: (ship_id, created_time), so a backfill run reads only its ship's rows of a table "
        "holding the whole fleet, and the arrival column (id), for the realtime sensor. Prints "
        "what it finds and what it will do, then builds the missing ones with CREATE INDEX "
        "CONCURRENTLY (ingestion goes on; a billion rows take minutes to hours), reporting "
        "progress. Does nothing when both exist; safe to interrupt and run again.",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="only print what exists and the statements it would run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    from n2w_pipeline import source_indexes
    from n2w_pipeline.database import redact, source_url

    settings = Settings.from_env()
    url = source_url(settings)  # the narrow table's server (N2W_SOURCE_URL, else the data database)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            steps = source_indexes.plan(conn, settings)
            read_only = conn.execute(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
            ).fetchone()
            size = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size(%s::regclass)), "
                "(SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass)",
                (".".join(settings.source_qualified),) * 2,
            ).fetchone()
    except psycopg.OperationalError as exc:
        raise SystemExit(f"n2w prepare: cannot connect to {redact(url)}: "
                         f"{' '.join(str(exc).split())}") from None
    except LookupError as exc:
        raise SystemExit(f"n2w prepare: {exc}") from None
    table = ".".join(settings.source_qualified)
    rows = f"~{max(int(size[1]), 0):,} rows, " if size and size[1] is not None else ""
    print(f"narrow table {table} ({rows}{size[0] if size else '?'} with indexes)")
    for s in steps:
        print(f"  {'missing' if s.needed else 'present'}  {s.purpose}")
    todo = [s for s in steps if s.needed]
    if not todo:
        print("nothing to do: both indexes exist")
        return 0
    print("will run (no table lock: ingestion and queries go on while it builds):")
    for s in todo:
        print(f"  {s.ddl};")
    if args.dry_run:
        print("--dry-run: nothing built")
        return 0
    if read_only and read_only[0]:
        print(f"n2w prepare: {redact(url)} is read-only (a replica?): run these on its primary, "
              "they reach the replica from there", file=sys.stderr)
        return 1
    for s in todo:
        t0 = time.perf_counter()
        print(f"building {s.key} index ...", flush=True)
        reporter = _Reporter(sys.stderr)
        try:
            source_indexes.build(url, settings, s, reporter)
        finally:
            reporter.close()
        print(f"built {s.key} index in {time.perf_counter() - t0:,.0f} s", flush=True)
    return 0


class _Reporter:
    """Progress lines: redrawn on a terminal; otherwise one per phase and every ~30 s."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.stream = stream
        self.tty = stream.isatty()
        self.phase: str | None = None
        self.phase_start = 0.0
        self.printed = -1e9

    def __call__(self, progress, elapsed: float) -> None:  # noqa: ANN001
        if progress.phase != self.phase:
            self.phase, self.phase_start = progress.phase, elapsed
            if self.tty and self.printed > -1e9:
                self.stream.write("\n")
        line = f"  {elapsed:6.0f} s  {progress}"
        fraction, spent = progress.fraction, elapsed - self.phase_start
        if fraction and 0 < fraction < 1 and spent > 0:
            line += f", phase ETA {spent * (1 - fraction) / fraction:,.0f} s"
        if self.tty:
            self.stream.write("\r" + line.ljust(90))
        elif elapsed == self.phase_start or elapsed - self.printed >= 30:
            self.stream.write(line + "\n")
        else:
            return
        self.printed = elapsed
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.printed > -1e9:
            self.stream.write("\n")
            self.stream.flush()
