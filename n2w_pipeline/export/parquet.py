"""One Parquet file per group × ship × day, written slice by slice and published by rename.

Each slice becomes one row group (zstd), so memory stays at one slice whatever the day holds.
The file is written as ``.<name>.tmp-<random>`` in its final folder, flushed to disk and
renamed over the final name (atomic on POSIX): a reader sees the old file or the new one,
never half of one. A day without rows still gets a file with the full schema and 0 rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from n2w_pipeline.export.read import ColumnStats
from n2w_pipeline.export.reconcile import frame_stats

COMPRESSION = "zstd"


@dataclass(frozen=True)
class ParquetResult:
    path: Path
    rows: int
    bytes: int
    sha256: str


class ParquetDayWriter:
    """Collects one day's slices of one group into a temporary file; ``publish`` renames it."""

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[str, str] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
        self.schema = schema
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.tmp, schema, compression=COMPRESSION, write_statistics=True,
            use_dictionary=False,  # float columns rarely repeat: the dictionary attempt only costs time
        )
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        assert self._writer is not None
        if table.num_rows:
            self._writer.write_table(table.replace_schema_metadata(self.schema.metadata))
            self.rows += table.num_rows

    def publish(self) -> ParquetResult:
        """Close, fsync, hash and rename into place."""
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        digest = hashlib.sha256()
        with open(self.tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            os.fsync(f.fileno())
        size = self.tmp.stat().st_size
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return ParquetResult(self.path, self.rows, size, digest.hexdigest())

    def discard(self) -> None:
        """Drop the temporary file (a failed day leaves the published file as it was)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the writer may be broken; the file goes anyway
                self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_stats(path: Path, columns: list[str]) -> ColumnStats:
    """The reconciliation's figures of a published file, read back from disk with Polars."""
    return frame_stats(pl.read_parquet(path), columns)
