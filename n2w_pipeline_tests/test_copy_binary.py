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
