"""Fixtures of the realtime tests: a narrow table with its arrival index, a Dagster instance."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from n2w_pipeline.config import Settings
from n2w_pipeline.generate import create_source_indexes, create_source_table
from n2w_pipeline.realtime.index import ensure_arrival_index


@pytest.fixture
def source(settings: Settings, conn: psycopg.Connection) -> Settings:
    """An empty narrow table with the fleet's indexes and the arrival index."""
    create_source_table(conn, settings)
    create_source_indexes(conn, settings)
    assert ensure_arrival_index(conn, settings)
    assert not ensure_arrival_index(conn, settings)  # idempotent
    return settings


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst
