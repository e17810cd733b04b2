"""Export settings and the Parquet layout other day products rely on (retention, readers)."""

import datetime as dt
from pathlib import Path

import pytest

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.export.paths import clickhouse_root, export_root, parquet_path
from n2w_pipeline_tests.conftest import REPO


def test_export_settings_from_env_and_defaults():
    s = Settings.from_env({"N2W_STATE_DIR": "/s"})
    assert export_root(s) == Path("/s/export") and clickhouse_root(s) == Path("/s/clickhouse")
    assert s.clickhouse_url is None and s.export_retries == 4
    s = Settings.from_env({"N2W_EXPORT_DIR": "/e", "N2W_CLICKHOUSE_PATH": "/c", "N2W_EXPORT_RETRIES": "2",
                           "N2W_CLICKHOUSE_URL": "http://u@h:8123/db", "N2W_EXPORT_RETRY_SECONDS": "0.1"})
    assert export_root(s) == Path("/e") and clickhouse_root(s) == Path("/c")
    assert s.clickhouse_url == "http://u@h:8123/db"
    assert s.export_retries == 2 and s.export_retry_seconds == 0.1
    with pytest.raises(ValueError, match="N2W_EXPORT_RETRIES"):
        Settings.from_env({"N2W_EXPORT_RETRIES": "0"})


def test_parquet_path_is_hive_style_per_group_ship_day():
    group = load_catalog(REPO / "channel_lists").group(2)
    s = Settings(export_dir=Path("/x"))
    got = parquet_path(s, group, "IMO9976903", dt.date(2025, 3, 1))
    assert got == Path(
        "/x/wide_2_engine_generator/ship_id=IMO9976903/date=2025-03-01/IMO9976903_2025-03-01.parquet"
    )


def test_dense_copy_decodes_what_it_encodes_and_refuses_nulls():
    import numpy as np

    from n2w_pipeline.copy_binary import (
        COPY_HEADER,
        COPY_TRAILER,
        decode_dense_copy,
        encode_copy_binary,
        encode_dense_copy,
    )
    from n2w_pipeline.pivot import WideBlock

    times = np.array([1_740_787_200_000_000, 1_740_787_215_000_000], np.int64)
    values = np.array([[1.5, -2.0, 0.0], [3.25, 7.0, -1e300]])
    mask = np.array([[True, False, True], [True, True, True]])
    block = WideBlock(times, values, mask)
    data = COPY_HEADER + memoryview(encode_dense_copy(block)).cast("B").tobytes() + COPY_TRAILER
    got_t, got_v = decode_dense_copy(data, 3)
    assert got_t.tolist() == times.tolist()
    assert np.array_equal(np.isnan(got_v), ~mask) and np.array_equal(got_v[mask], values[mask])
    by_t, by_col = decode_dense_copy(data, 3, by_column=True)
    assert by_t.tolist() == times.tolist() and by_col.shape == (3, 2) and by_col.flags.c_contiguous
    assert np.array_equal(by_col, got_v.T, equal_nan=True)
    with pytest.raises(ValueError, match="8 bytes"):
        decode_dense_copy(encode_copy_binary(block), 3)  # a real NULL: not a dense COPY
