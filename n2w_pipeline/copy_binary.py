"""A wide block as PostgreSQL binary COPY, built vectorised. Pure functions, no I/O.

The format (PostgreSQL docs, "COPY … BINARY"): an 11-byte signature, a 32-bit flags field
and a 32-bit header-extension length, then per row a 16-bit field count and per field a
32-bit length (-1 = NULL) followed by the value; a 16-bit -1 ends the data. A timestamp
is an int64 of µs since 2000-01-01, a float8 its IEEE bytes; everything big-endian.
Encoding through Python objects measured 3-6x slower than these packed NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from n2w_pipeline.pivot import WideBlock

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since 1970
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def _copy_rows(block: WideBlock) -> np.ndarray:
    """Every row of a binary COPY of (created_time, col_0 … col_n) with every field
    present (length 8), as one packed structured array: numpy byte-swaps while assigning."""
    n, k = block.values.shape
    cell = np.dtype([("len", ">i4"), ("v", ">f8")])
    row = np.dtype([("fields", ">i2"), ("tlen", ">i4"), ("t", ">i8"), ("c", cell, (k,))])
    out = np.empty(n, row)
    out["fields"] = k + 1
    out["tlen"] = 8
    out["t"] = block.times_us - _PG_EPOCH_US
    out["c"]["len"] = 8
    out["c"]["v"] = block.values
    return out


def encode_copy_binary(block: WideBlock) -> bytes:
    """PostgreSQL binary COPY of (created_time, col_0 … col_n) rows, built vectorised.

    A blank cell is sent as NULL (length -1, no value). Every field of the format is a
    whole number of 16-bit words, so the rows are built dense (``_copy_rows``), blank
    cells' lengths set to -1 and their four value words dropped in one compress.
    """
    rows = _copy_rows(block)
    if block.mask.all():
        return COPY_HEADER + rows.tobytes() + COPY_TRAILER
    n, k = block.values.shape
    rows["c"]["len"] = np.where(block.mask, 8, -1)
    keep = np.ones((n, 7 + 6 * k), dtype=bool)
    keep[:, 7:].reshape(n, k, 6)[:, :, 2:] = block.mask[:, :, None]
    return COPY_HEADER + rows.view(np.uint16).reshape(n, -1)[keep].tobytes() + COPY_TRAILER


def encode_dense_copy(block: WideBlock) -> np.ndarray:
    """The rows of a binary COPY of (created_time, col_0 … col_n) with every field present.

    Blank cells are sent as NaN, which the statements reading the stage turn back into
    NULL (``NULLIF(c, 'NaN')``): a parsed file never holds NaN (non-finite cells are
    skipped). Fixed-width rows make this one vectorised pass, ~30x faster than a NULL-aware
    encoding. Returns a structured array; send ``memoryview(rows).cast("B")``.
    """
    out = _copy_rows(block)
    out["c"]["v"] = np.where(block.mask, block.values, np.nan)
    return out


def decode_dense_copy(data: bytes | bytearray | memoryview, k: int, by_column: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``encode_dense_copy``: a binary COPY of (created_time, col_0 … col_k-1)
    whose fields are all present (the query sends NULL as NaN, ``coalesce(c, 'NaN')``) →
    (times as µs since 1970, values as a (rows, k) float64 array), one vectorised pass.
    ``by_column``: values as a (k, rows) array instead, each channel one contiguous row (the
    byte swap and the transpose in the same pass: what Arrow and Parquet want).
    Raises ``ValueError`` if the data is not such a COPY."""
    view = memoryview(data)
    if len(view) < len(COPY_HEADER) + 2 or bytes(view[: len(COPY_HEADER)]) != COPY_HEADER:
        raise ValueError("not a binary COPY without header extension")
    if bytes(view[-2:]) != COPY_TRAILER:
        raise ValueError("binary COPY without its trailer")
    body = view[len(COPY_HEADER): -2]
    cell = np.dtype([("len", ">i4"), ("v", ">f8")])
    row = np.dtype([("fields", ">i2"), ("tlen", ">i4"), ("t", ">i8"), ("c", cell, (k,))])
    if len(body) % row.itemsize:
        raise ValueError(f"binary COPY rows are not {k + 1} fields of 8 bytes (a NULL or another type)")
    rows = np.frombuffer(body, dtype=row)
    if rows.size and ((rows["fields"] != k + 1).any() or (rows["tlen"] != 8).any()
                      or (rows["c"]["len"] != 8).any()):
        raise ValueError(f"binary COPY rows are not {k + 1} fields of 8 bytes (a NULL or another type)")
    times = rows["t"].astype(np.int64) + _PG_EPOCH_US
    if not by_column:
        return times, rows["c"]["v"].astype(np.float64)
    values = np.empty((k, rows.size), np.float64)
    values.T[...] = rows["c"]["v"]
    return times, values


_PG_TIMESTAMPS = (1114, 1184)  # timestamp, timestamptz: int64 µs since 2000-01-01
_ARRAY_ELEMENTS = {1114: ">i8", 1184: ">i8", 23: ">i4", 701: ">f8"}


def decode_array(data: bytes | None) -> np.ndarray:
    """A one-dimensional PostgreSQL array without NULL elements in binary format (a result
    value of ``array_agg`` of int4, float8 or timestamp) as a native NumPy array, one
    vectorised pass; timestamps as µs since 1970. ``None`` (the aggregate of no rows) →
    empty. Raises ``ValueError`` for another shape, type or a NULL element."""
    if data is None:
        return np.empty(0, np.int64)
    ndim, has_null, oid = (int(x) for x in np.frombuffer(data, ">i4", 3))
    if ndim == 0:
        return np.empty(0, np.int64)
    if ndim != 1 or has_null or oid not in _ARRAY_ELEMENTS:
        raise ValueError(f"not a one-dimensional array of int4, float8 or timestamp without NULLs "
                         f"(ndim {ndim}, NULLs {has_null}, element type {oid})")
    n = int(np.frombuffer(data, ">i4", 1, 12)[0])
    kind = np.dtype(_ARRAY_ELEMENTS[oid])
    elements = np.frombuffer(data, np.dtype([("len", ">i4"), ("v", kind)]), n, 20)
    if (elements["len"] != kind.itemsize).any():
        raise ValueError("array elements of an unexpected length")
    out = elements["v"].astype(kind.newbyteorder("="))
    if oid in _PG_TIMESTAMPS:
        out += _PG_EPOCH_US
    return out


def decode_text_array(data: bytes | None) -> list[str]:
    """A one-dimensional text array without NULLs in binary format as a list (for the few
    values a read sends as text); ``None`` → []."""
    if data is None:
        return []
    view = memoryview(data)
    ndim, has_null = (int(x) for x in np.frombuffer(data, ">i4", 2))
    if ndim == 0:
        return []
    if ndim != 1 or has_null:
        raise ValueError("not a one-dimensional text array without NULLs")
    n = int(np.frombuffer(data, ">i4", 1, 12)[0])
    out, pos = [], 20
    for _ in range(n):
        length = int.from_bytes(view[pos:pos + 4], "big", signed=True)
        out.append(bytes(view[pos + 4:pos + 4 + length]).decode("utf-8"))
        pos += 4 + length
    return out
