"""The binary COPY encoders against a field-by-field reference."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from n2w_pipeline.copy_binary import encode_copy_binary, encode_dense_copy
from n2w_pipeline.pivot import WideBlock

PG_EPOCH_US = 946_684_800_000_000


def _reference_copy(block: WideBlock, blank_as_nan: bool = False) -> bytes:
    """PostgreSQL's binary COPY format written row by row, field by field."""
    out = bytearray(b"PGCOPY\n\xff\r\n\x00" + bytes(8))
    n, k = block.values.shape
    for i in range(n):
        out += struct.pack(">hiq", k + 1, 8, int(block.times_us[i]) - PG_EPOCH_US)
        for j in range(k):
            if block.mask[i, j]:
                out += struct.pack(">id", 8, block.values[i, j])
            elif blank_as_nan:
                out += struct.pack(">id", 8, float("nan"))
            else:
                out += struct.pack(">i", -1)
    return bytes(out + struct.pack(">h", -1))


@pytest.mark.parametrize(
    ("rows", "cols", "blank", "order"),
    [(50, 7, 0.3, "C"), (40, 9, 0.3, "F"), (1, 1, 0.0, "C"), (3, 4, 1.0, "C"), (0, 5, 0.5, "C")],
)
def test_copy_encoders_match_the_format(rows: int, cols: int, blank: float, order: str) -> None:
    rng = np.random.default_rng(rows * 100 + cols)
    times = np.sort(rng.integers(-10**15, 10**15, rows))
    values = np.asarray(rng.normal(size=(rows, cols)) * 1e6, order=order)
    mask = np.asarray(rng.random((rows, cols)) >= blank, order=order)
    block = WideBlock(times, values, mask)
    assert encode_copy_binary(block) == _reference_copy(block)
    dense = encode_dense_copy(block)
    header, trailer = _reference_copy(WideBlock.empty(cols))[:19], struct.pack(">h", -1)
    sent = header + memoryview(dense).cast("B").tobytes() + trailer
    expected = _reference_copy(block, blank_as_nan=True)
    assert len(sent) == len(expected)
    # NaN bit patterns may differ; compare the decoded floats instead of raw bytes there
    assert np.array_equal(dense["c"]["v"], np.where(mask, values, np.nan), equal_nan=True)


def test_array_decoders_read_what_the_server_sends(conn) -> None:  # noqa: ANN001 - fixture
    """decode_array / decode_text_array on binary arrays made by the server, as a read gets
    them: timestamps, int4, float8 (NaN and ±Infinity kept), text, and array_agg of no rows."""
    from n2w_pipeline.copy_binary import decode_array, decode_text_array

    with conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT ARRAY['2025-03-01 00:00:15', '1999-12-31 23:59:59.999999']::timestamp[], "
            "ARRAY[0, -1, 2147483647]::int4[], ARRAY[1.5, 'NaN', '-Infinity', '-0']::float8[], "
            "ARRAY['/a/ü', '', 'x y']::text[], (SELECT array_agg(1) WHERE false)")
        result = cur.pgresult
        t, i, f, s, none = (result.get_value(0, k) for k in range(5))
    expected_t = np.array(["2025-03-01T00:00:15", "1999-12-31T23:59:59.999999"], "datetime64[us]")
    assert decode_array(t).tolist() == expected_t.astype(np.int64).tolist()
    assert decode_array(i).tolist() == [0, -1, 2147483647] and decode_array(i).dtype == np.int32
    got = decode_array(f)
    assert got[0] == 1.5 and np.isnan(got[1]) and got[2] == -np.inf and np.signbit(got[3])
    assert decode_text_array(s) == ["/a/ü", "", "x y"]
    assert none is None and decode_array(none).size == 0 and decode_text_array(none) == []
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT ARRAY[1, NULL]::int4[]")
        with_null = cur.pgresult.get_value(0, 0)
    with pytest.raises(ValueError, match="NULL"):
        decode_array(with_null)
