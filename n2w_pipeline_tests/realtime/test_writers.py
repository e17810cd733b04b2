"""Arrival ranges settle only once no transaction can still write into them: ids drawn
before their transaction has an xid (``nextval`` does not always assign one), the
``server_created_time`` window, what a role without privileges sees, and the rules of
settling (full ranges, prepared transactions, a standby's replay position), pure."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from n2w_pipeline.realtime.cursor import Arrival, Cursor, Pending, arrival
from n2w_pipeline.realtime.index import ensure_arrival_index
from n2w_pipeline.realtime.plan import MAX_PENDING, plan_tick
from n2w_pipeline.realtime.read import PartitionRows, TickRead
from n2w_pipeline.realtime.tick import tick
from n2w_pipeline.realtime.writers import Writers, id_sequence, read_writers
from n2w_pipeline_tests.helpers import hour_key, sql_reference, wide_cells
from n2w_pipeline_tests.realtime.helpers import H0, HOUR, NOW, S, Sensor, insert

SETTLE_WAIT = 1.5  # beyond the one-second settle delay of the xmin rule this replaces


def _no_xid(session: psycopg.Connection) -> bool:
    return session.execute("SELECT txid_current_if_assigned()").fetchone()[0] is None


def test_an_id_drawn_before_its_transaction_has_an_xid_is_not_lost(source, catalog, conn, pg_url, instance):
    """The issue's sequence: A draws an id (no xid), B commits later ids, a tick sees the gap,
    A inserts its row with that id and commits a while later: the row reaches the wide table."""
    settings = source
    a_ship, b_ship = settings.ships[0], settings.ships[1]
    g1 = catalog.group(1)
    sensor = Sensor(settings, catalog, instance)
    sensor.tick()
    seq = id_sequence(conn, settings)
    assert seq is not None
    with psycopg.connect(pg_url) as a:  # session A: one open transaction
        conn.execute("SELECT nextval(%s)", (seq,))  # WAL-logs the sequence: A's nextval will not
        (a_id,) = a.execute("SELECT nextval(%s)", (seq,)).fetchone()
        assert _no_xid(a)  # A holds an id and no transaction id
        # B commits a minute of rows with later ids
        insert(conn, settings, [(b_ship, ch, H0 + HOUR + i * S, float(i)) for ch in g1.channels[:5]
                                for i in range(4)])
        runs, _ = sensor.tick()  # sees B's rows and the gap below them, A's id in it
        assert sensor.parts(runs) == [hour_key(b_ship, H0 + HOUR)]
        gaps = json.loads(sensor.cursor)["pending"]
        assert any(lo < a_id <= hi for lo, hi, *_ in gaps)
        for r in runs:
            assert sensor.execute(r, catalog)
        # A inserts its row with the id it drew: only now does it get an xid
        a.execute(sql.SQL("INSERT INTO {} (id, ship_id, data_channel_id, created_time, double_v, "
                          "value_format) VALUES (%s, %s, %s, %s, 42.5, 'Decimal')").format(
            sql.Identifier(*settings.source_qualified)), (a_id, a_ship, g1.channels[0], H0 + 7 * S))
        assert not _no_xid(a)
        for _ in range(2):  # A stays open over ticks
            time.sleep(SETTLE_WAIT)
            runs, _ = sensor.tick()
            assert runs == []
        assert any(lo < a_id <= hi for lo, hi, *_ in json.loads(sensor.cursor)["pending"])  # still watched
        a.commit()
    runs, _ = sensor.tick()
    assert sensor.parts(runs) == [hour_key(a_ship, H0)] and runs[0].tags["n2w/realtime"] == "late"
    assert sensor.execute(runs[0], catalog)
    assert wide_cells(conn, settings, g1, a_ship) == sql_reference(conn, settings, g1, a_ship, H0, H0 + HOUR)
    assert wide_cells(conn, settings, g1, a_ship)[1][(H0 + 7 * S, g1.channels[0])] == 42.5
    # and once it has been read after its writer ended, the range is settled
    runs, _ = sensor.tick()
    assert runs == [] and json.loads(sensor.cursor)["pending"] == []


def test_server_created_time_window_waits_for_a_transaction_without_an_xid(source, catalog, conn, pg_url):
    """server_created_time stamped by now() is the transaction's start: a row may be inserted
    long after its arrival time, by a transaction that had no xid when the window was read."""
    settings = replace(source, realtime_cursor="server_created_time")
    assert ensure_arrival_index(conn, settings)
    arr = arrival(settings)
    a_ship, b_ship = settings.ships[0], settings.ships[1]
    ch = catalog.group(2).channels[0]
    cursor = tick(conn, settings, None, NOW).cursor.to_json(arr)
    with psycopg.connect(pg_url) as a:
        (a_now,) = a.execute("SELECT now()::timestamp").fetchone()  # A's transaction has begun
        assert _no_xid(a)
        time.sleep(0.01)
        b_time = conn.execute("SELECT clock_timestamp()::timestamp").fetchone()[0]
        insert(conn, settings, [(b_ship, ch, H0 + HOUR, 1.0, b_time)])
        plan = tick(conn, settings, cursor, NOW)
        assert [(r.ship, r.hour) for r in plan.runs] == [(b_ship, H0 + HOUR)]
        cursor = plan.cursor.to_json(arr)
        insert(a, settings, [(a_ship, ch, H0, 2.0, a_now)])  # its arrival time: A's start, before B's
        for _ in range(2):
            time.sleep(SETTLE_WAIT)
            plan = tick(conn, settings, cursor, NOW + dt.timedelta(seconds=10))
            assert plan.runs == [] and plan.cursor.pending
            cursor = plan.cursor.to_json(arr)
        a.commit()
    plan = tick(conn, settings, cursor, NOW + dt.timedelta(seconds=20))
    assert [(r.ship, r.hour, r.reason) for r in plan.runs] == [(a_ship, H0, "late")]


def _role_url(pg_url: str, role: str) -> str:
    parts = urlsplit(pg_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def test_writers_are_seen_by_a_role_without_privileges(source, conn, pg_url):
    """pg_locks shows every session's locks to any role: a plain monitoring role sees another
    user's transaction holding a drawn id (pg_stat_activity hides its xact_start). With ids,
    only transactions that drew one count; with server_created_time, every open one."""
    settings = source
    role = f"n2w_mon_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(settings.source_schema), sql.Identifier(role)))
        try:
            mon = psycopg.connect(_role_url(pg_url, role), autocommit=True)
        except psycopg.OperationalError as e:  # a server that asks this new role for a password
            pytest.skip(f"cannot log in as a new role on this server: {e}")
        seq = id_sequence(conn, settings)
        with mon, psycopg.connect(pg_url) as writer, psycopg.connect(pg_url) as idle:
            idle.execute("SELECT 1")  # an open transaction that draws no id
            writer.execute("SELECT nextval(%s)", (seq,))
            wpid = writer.info.backend_pid
            hidden = mon.execute("SELECT xact_start FROM pg_stat_activity WHERE pid = %s", (wpid,)).fetchone()
            assert hidden == (None,)  # what a plain role cannot see there
            seen = read_writers(mon, settings)
            assert {w.split(":")[0] for w in seen.open} == {str(wpid)} and seen.by == f"sequence {seq}"
            every = read_writers(mon, replace(settings, realtime_cursor="server_created_time"))
            assert {str(wpid), str(idle.info.backend_pid)} <= {w.split(":")[0] for w in every.open}
            assert seen.lsn > 0
            writer.rollback()
            assert read_writers(mon, settings).open == frozenset()
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ---------------------------------------------------------------------------- pure rules

IDS = Arrival("id", unique=True)
FIRST, LAST = dt.datetime(2025, 1, 1), dt.datetime(2025, 3, 1, 12)


def _plan(cursor: Cursor, writers: Writers | None, pending_rows=None, replay=None, gaps=()):  # noqa: ANN001, ANN202
    read = TickRead(xmin=1, xmax=1, replay_lsn=replay, writers=writers, gaps=list(gaps),
                    pending=pending_rows or {})
    return plan_tick(read, cursor, IDS, ships=["S1"], first_hour=FIRST, last_hour=LAST, now=100.0)


def test_settling_rules():
    row = PartitionRows("S1", dt.datetime(2025, 3, 1, 5), 1, 12)
    # a new gap keeps the writers open now; none open: cleared at once, dropped after one more read
    plan = _plan(Cursor("id", frontier=20), Writers(frozenset({"7:3/1"}), lsn=500), gaps=[(10, 12)])
    assert plan.cursor.pending == [Pending(10, 12, ["7:3/1"], 100.0, {}, None)]
    plan = _plan(plan.cursor, Writers(frozenset({"7:3/1", "8:4/1"}), lsn=600))  # still open
    assert plan.cursor.pending[0].writers == ["7:3/1"] and plan.cursor.pending[0].cleared is None
    plan = _plan(plan.cursor, Writers(frozenset({"8:4/1"}), lsn=700))  # 7 ended: cleared at 700
    assert plan.cursor.pending[0].cleared == 700
    last = _plan(plan.cursor, Writers(frozenset({"8:4/1"}), lsn=800), pending_rows={0: [row]})
    assert last.cursor.pending == [] and [r.reason for r in last.runs] == ["late"]  # read, then dropped
    # on a standby the last read waits for the replay past the writers' WAL position
    kept = _plan(plan.cursor, Writers(frozenset(), lsn=800), replay=699)
    assert len(kept.cursor.pending) == 1
    assert _plan(kept.cursor, Writers(frozenset(), lsn=900), replay=700).cursor.pending == []
    # a prepared transaction may be a writer that was seen before its PREPARE: nothing clears
    held = _plan(Cursor("id", frontier=20, pending=[Pending(10, 12, ["7:3/1"], 50.0, {})]),
                 Writers(frozenset(), frozenset({"prepared:-1/99"}), lsn=900))
    assert held.cursor.pending[0].cleared is None
    # every id of a range visible: nothing can be added, dropped whatever is open
    full = _plan(Cursor("id", frontier=20, pending=[Pending(10, 12, ["7:3/1"], 50.0, {})]),
                 Writers(frozenset({"7:3/1"}), lsn=900), pending_rows={0: [replace(row, rows=2)]})
    assert full.cursor.pending == []
    # a range stored before writers were tracked takes every writer open now
    legacy = _plan(Cursor("id", frontier=20, pending=[Pending(10, 12, None, 50.0, {})]),
                   Writers(frozenset({"9:5/1"}), lsn=900))
    assert legacy.cursor.pending[0].writers == ["9:5/1"]
    # an old range is named in a warning once per WARN_PENDING_SECONDS, never given up
    old = _plan(Cursor("id", frontier=20, pending=[Pending(10, 12, ["7:3/1"], -1000.0, {})]),
                Writers(frozenset({"7:3/1"}), lsn=900, by="sequence s",
                        details={"7:3/1": "pid 7 (u, 'app')"}))
    assert len(old.warnings) == 1 and "pid 7 (u, 'app')" in old.warnings[0]
    assert old.cursor.pending[0].warned == 1 and not _plan(old.cursor, Writers(frozenset({"7:3/1"}))).warnings
    # too many ranges: the two closest merge (the merged one re-reads what lies between)
    many = [Pending(10 * i, 10 * i + 1, ["1:1/1"], 0.0, {}) for i in range(MAX_PENDING)]
    many[5] = Pending(50, 59, ["1:1/1"], 0.0, {})  # 59 .. 60: the closest pair
    merged = _plan(Cursor("id", frontier=10_000, pending=many), Writers(frozenset({"1:1/1"})),
                   gaps=[(9_990, 9_991)])
    assert len(merged.cursor.pending) == MAX_PENDING
    assert Pending(50, 61, ["1:1/1"], 0.0, None) in merged.cursor.pending
