"""The arrival index: ticks use it, and without it the sensor refuses to scan."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from psycopg import sql

from n2w_pipeline.generate import create_source_table
from n2w_pipeline.realtime.index import arrival_index_name, ensure_arrival_index
from n2w_pipeline.realtime.read import batch_query, pending_query, window_queries
from n2w_pipeline_tests.realtime.helpers import S, Sensor


def test_tick_queries_use_the_arrival_index(source, conn):
    """On a table big enough for the planner to care, with enable_seqscan on."""
    settings = source
    src = sql.Identifier(*settings.source_qualified)
    conn.execute(sql.SQL(
        """INSERT INTO {} (ship_id, data_channel_id, created_time, server_created_time, double_v,
  value_format)
SELECT 'IMO9976903', '/ch/' || (i % 1000), timestamp '2025-03-01' + (i / 1000) * interval '15 s',
       timestamp '2025-03-01' + (i / 1000) * interval '15 s', i, 'Decimal'
FROM generate_series(1, 300000) i""").format(src))
    conn.execute(sql.SQL("ANALYZE {}").format(src))
    assert conn.execute("SHOW enable_seqscan").fetchone() == ("on",)

    def plan_nodes(query: sql.Composed, params: dict) -> list[tuple[str, str | None]]:
        (doc,) = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
        out = []

        def walk(node: dict) -> None:
            out.append((node["Node Type"], node.get("Index Name") or node.get("Relation Name")))
            for child in node.get("Plans", []):
                walk(child)

        walk(doc[0]["Plan"])
        return out

    index = arrival_index_name(settings)
    nodes = plan_nodes(batch_query(settings), {"f": 299_000, "n": 500_000})
    assert ("Index Scan", index) in nodes or ("Index Only Scan", index) in nodes, nodes
    assert not any(t == "Seq Scan" for t, _ in nodes), nodes
    nodes = plan_nodes(pending_query(settings), {"lo": [1000, 5000], "hi": [1010, 5002]})
    assert any(t.startswith("Index") and name == index for t, name in nodes), nodes
    assert not any(t == "Seq Scan" and name == settings.source_table for t, name in nodes), nodes

    ts = replace(settings, realtime_cursor="server_created_time")
    ensure_arrival_index(conn, ts)
    conn.execute(sql.SQL("ANALYZE {}").format(src))
    bound, rows = window_queries(ts)
    last = dt.datetime(2025, 3, 1) + 299 * S
    for q, params in ((bound, {"f": last, "n1": 999}), (rows, {"f": last, "m": last + 10 * S})):
        nodes = plan_nodes(q, params)
        assert any(name == arrival_index_name(ts) for _, name in nodes), nodes
        assert not any(t == "Seq Scan" for t, _ in nodes), nodes


def test_without_the_index_the_sensor_refuses_to_scan(settings, catalog, conn, instance):
    create_source_table(conn, settings)
    sensor = Sensor(settings, catalog, instance)
    runs, skip = sensor.tick()
    assert runs == [] and sensor.cursor is None
    assert skip and "no valid b-tree index" in skip and "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in skip
