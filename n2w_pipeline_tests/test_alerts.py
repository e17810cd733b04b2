"""Alerts: a real failed run and a real failed blocking check reach a webhook (a local HTTP
server in the test) through the two sensors, evaluated against the instance as the daemon does."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.defs.alerts import (
    AlertError,
    build_check_failure_sensor,
    build_run_failure_sensor,
    notify,
    run_scope,
)
from n2w_pipeline.defs.resources import N2WDatabase
from n2w_pipeline.defs.wide_assets import build_wide_assets
from n2w_pipeline.materialize import prepare_tables
from n2w_pipeline_tests.helpers import hour_key, run_wide
from n2w_pipeline_tests.ops_env import dagster_database
from n2w_pipeline_tests.test_wide_assets import insert_rows

SHIP = "IMO9976903"
H0 = dt.datetime(2025, 3, 1)
S15 = dt.timedelta(seconds=15)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server that keeps every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook?token=secret", received
    server.shutdown()
    server.server_close()


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None) -> str | None:
    """One evaluation of ``sensor`` as the daemon runs it; returns the new cursor."""
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return sensor.evaluate_tick(context).cursor


def test_failed_run_and_failed_blocking_check_are_posted(settings, conn, pg_url, tmp_path: Path, webhook):
    url, received = webhook
    lists = tmp_path / "alert_lists"
    lists.mkdir()
    (lists / "1_small.txt").write_text("/a\n/b\n")
    s = replace(settings, channel_lists_dir=lists, slice_hours=1, alert_webhook=url, ui_url="http://ui:3000")
    catalog = load_catalog(lists)
    insert_rows(conn, s, [(SHIP, ch, H0 + i * S15 + h * dt.timedelta(hours=1), "Decimal", 1.0 + i, None, None,
                           None) for ch in ("/a", "/b") for i in range(4) for h in range(3)])
    runs, checks = build_run_failure_sensor(s), build_check_failure_sensor(s)
    with dagster_database(pg_url) as storage, dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": storage}}}) as instance:
        run_cursor, check_cursor = tick(runs, instance, None), tick(checks, instance, None)
        assert run_wide(s, catalog, first=hour_key(SHIP, H0), last=hour_key(SHIP, H0 + dt.timedelta(hours=1)),
                        instance=instance).success

        # a real failed run: a trigger rejects the third hour's rows
        with conn.transaction():
            prepare_tables(conn, s, catalog.groups, [SHIP])
            fn = sql.Identifier(s.target_schema, "n2w_test_reject")
            conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                                 "$$BEGIN RAISE EXCEPTION 'simulated failure'; END$$").format(fn))
            table = sql.Identifier(s.target_schema, s.table_name(SHIP, 1))
            conn.execute(sql.SQL("CREATE TRIGGER reject BEFORE INSERT ON {} FOR EACH ROW "
                                 "EXECUTE FUNCTION {}()").format(table, fn))
        with pytest.raises(Exception, match="simulated failure"):
            run_wide(s, catalog, partition_key=hour_key(SHIP, H0 + dt.timedelta(hours=2)), instance=instance)
        failed_run = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))[0]

        # a real failed blocking check: a late narrow row, then the checks re-run alone
        insert_rows(conn, s, [(SHIP, "/a", H0 + 9 * S15, "Decimal", 4.5, None, None, None)])
        key = dg.AssetKey(catalog.groups[0].asset_name)
        checked = dg.materialize([build_wide_assets(s, catalog)], instance=instance, raise_on_error=False,
                                 selection=dg.AssetSelection.checks(dg.AssetCheckKey(key, "reconciliation")),
                                 resources={"n2w_db": N2WDatabase(url=s.database_url)})
        assert not checked.success

        run_cursor = tick(runs, instance, run_cursor)
        check_cursor = tick(checks, instance, check_cursor)
        by_kind = {}
        for body in received:
            by_kind.setdefault(body["alert"], []).append(body)
        run_alerts = {b["run_id"]: b for b in by_kind["run_failure"]}
        assert set(run_alerts) == {failed_run.run_id, checked.run_id}  # the two failed runs, once each
        alert = run_alerts[failed_run.run_id]
        assert alert["ship"] == SHIP
        assert alert["hours"] == {"start": "2025-03-01T02:00", "end": "2025-03-01T03:00"}
        assert alert["run_link"] == f"http://ui:3000/runs/{failed_run.run_id}"
        assert "simulated failure" in alert["error"] and "Traceback" not in alert["error"]
        (check_alert,) = by_kind["check_failure"]
        assert (check_alert["asset"], check_alert["check"], check_alert["run_id"]) == (
            key.to_user_string(), "reconciliation", checked.run_id)
        assert check_alert["ship"] == SHIP and check_alert["hours"]["start"] == "2025-03-01T00:00"
        assert "missing_row" in check_alert["error"]

        # nothing new: nothing sent again
        tick(runs, instance, run_cursor)
        tick(checks, instance, check_cursor)
        assert len(received) == 3


def test_a_webhook_that_does_not_answer_is_one_line_without_the_url(settings):
    s = replace(settings, alert_webhook="http://127.0.0.1:9/hook?token=secret")
    with pytest.raises(AlertError) as exc:
        notify(s, {"alert": "run_failure", "run_link": "x", "error": "e"})
    assert "N2W_ALERT_WEBHOOK" in str(exc.value) and "secret" not in str(exc.value)


def test_a_run_of_several_ships_names_them_all():
    """`n2w backfill` runs a block of neighbouring ships × hours as one range run: its alert
    lists every ship the range covers, and the hours."""
    ships = ("IMO1", "IMO2", "IMO3", "IMO4")
    tags = {"dagster/asset_partition_range_start": "2025-03-01-00:00|IMO2",
            "dagster/asset_partition_range_end": "2025-03-01-05:00|IMO4"}
    assert run_scope(tags, ships) == {"ship": None, "ships": ["IMO2", "IMO3", "IMO4"],
                                      "hours": {"start": "2025-03-01T00:00", "end": "2025-03-01T06:00"}}
    one = {k: v.replace("IMO4", "IMO2") for k, v in tags.items()}
    assert run_scope(one, ships)["ships"] == ["IMO2"]
