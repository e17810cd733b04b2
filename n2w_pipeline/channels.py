"""Channel lists → channel groups → wide-table column names.

One file per group in ``channel_lists/``, named ``<group number>_<name>.txt``: the number
is the table suffix and never changes when other lists are added. One channel id per
line; lines are stripped, blank lines and ``#`` comments ignored.

PostgreSQL cuts identifiers at 63 bytes without a word, so a longer channel id gets a
deterministic column name: its first bytes, ``~`` and a hash of the whole id. The full
id is kept in a column comment and in the ``n2w_column_map`` table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_IDENTIFIER_BYTES = 63
MAX_COLUMNS = 1600
MAX_TUPLE_BYTES = 8160  # a heap tuple must fit one 8 kB page
TIME_COLUMN = "created_time"
_HASH_CHARS = 10
_FILE_RE = re.compile(r"^(?P<group>[1-9][0-9]{0,3})_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.txt$")


class ChannelListError(ValueError):
    """A channel list cannot be used; the message names the file (and line)."""


class GroupTooWideError(ChannelListError):
    """A group's wide table would not fit PostgreSQL's column or row-size limits."""


def column_name(channel_id: str) -> str:
    """The column for ``channel_id``: itself if it fits 63 bytes, else prefix~hash."""
    raw = channel_id.encode("utf-8")
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return channel_id
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    prefix = raw[: MAX_IDENTIFIER_BYTES - _HASH_CHARS - 1].decode("utf-8", errors="ignore")
    return f"{prefix}~{digest}"


def row_bytes(n_channels: int) -> int:
    """Worst-case heap tuple size of a wide row: header, null bitmap, all float8 filled."""
    natts = n_channels + 1  # created_time
    header = 23 + (natts + 7) // 8
    header = (header + 7) // 8 * 8
    return header + 8 * natts


@dataclass(frozen=True)
class ChannelGroup:
    """One channel list: one wide table per ship."""

    number: int
    name: str
    path: Path
    channels: tuple[str, ...]
    columns: tuple[str, ...] = field(repr=False)

    @property
    def asset_name(self) -> str:
        return f"wide_{self.number}_{self.name}"

    @property
    def long_ids(self) -> dict[str, str]:
        """column → channel id, for the channels whose column is not the id itself."""
        return {c: ch for ch, c in zip(self.channels, self.columns, strict=False) if c != ch}


@dataclass(frozen=True)
class ChannelCatalog:
    """All groups, and where each channel lives."""

    groups: tuple[ChannelGroup, ...]

    def __post_init__(self) -> None:
        index = {ch: (g.number, i) for g in self.groups for i, ch in enumerate(g.channels)}
        object.__setattr__(self, "_index", index)

    def locate(self, channel_id: str) -> tuple[int, int] | None:
        """(group number, column position) of a channel, or None if in no list."""
        return self._index.get(channel_id)  # type: ignore[attr-defined]

    def group(self, number: int) -> ChannelGroup:
        for g in self.groups:
            if g.number == number:
                return g
        raise KeyError(f"no channel group {number}")

    @property
    def all_channels(self) -> list[str]:
        return [ch for g in self.groups for ch in g.channels]


def parse_list(path: Path, lines: Iterable[str]) -> list[tuple[int, str]]:
    """(line number, channel id) pairs of one list file."""
    out = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip().lstrip("\ufeff").strip()
        if not text or text.startswith("#"):
            continue
        if "\x00" in text:
            raise ChannelListError(f"{path}:{lineno}: channel id contains a NUL byte")
        out.append((lineno, text))
    return out


def build_group(number: int, name: str, path: Path, entries: Sequence[tuple[int, str]]) -> ChannelGroup:
    """Validate one group's channels and give them column names."""
    if not entries:
        raise ChannelListError(f"{path}: the list is empty (no channel ids)")
    seen: dict[str, int] = {}
    for lineno, ch in entries:
        if ch in seen:
            raise ChannelListError(f"{path}:{lineno}: channel {ch!r} already listed on line {seen[ch]}")
        seen[ch] = lineno
    channels = tuple(ch for _, ch in entries)
    columns = tuple(column_name(ch) for ch in channels)
    by_col: dict[str, str] = {}
    for (lineno, ch), col in zip(entries, columns, strict=False):
        if col == TIME_COLUMN:
            raise ChannelListError(f"{path}:{lineno}: channel id {ch!r} clashes with the time column")
        if col in by_col:
            raise ChannelListError(
                f"{path}:{lineno}: channel {ch!r} maps to column {col!r}, as does {by_col[col]!r}"
            )
        by_col[col] = ch
    n = len(channels)
    width = row_bytes(n)
    if n + 1 > MAX_COLUMNS or width > MAX_TUPLE_BYTES:
        raise GroupTooWideError(
            f"{path}: group {number} ({name}) has {n} channels: a wide row needs {n + 1} columns "
            f"and up to {width} bytes, PostgreSQL allows {MAX_COLUMNS} columns and "
            f"{MAX_TUPLE_BYTES} bytes per row; split the list (at most "
            f"{max_channels_per_group()} channels per group)"
        )
    return ChannelGroup(number, name, path, channels, columns)


def max_channels_per_group() -> int:
    n = MAX_COLUMNS - 1
    while row_bytes(n) > MAX_TUPLE_BYTES:
        n -= 1
    return n


def load_catalog(folder: Path) -> ChannelCatalog:
    """Load every ``<n>_<name>.txt`` in ``folder``; any problem is a ChannelListError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ChannelListError(f"{folder}: channel list folder not found (N2W_CHANNEL_LISTS)")
    groups: list[ChannelGroup] = []
    owner: dict[str, tuple[Path, int]] = {}
    numbers: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        m = _FILE_RE.match(path.name)
        if not m:
            raise ChannelListError(
                f"{path}: file name must be <group number>_<name>.txt, e.g. 4_cargo.txt"
            )
        number = int(m["group"])
        if number in numbers:
            raise ChannelListError(f"{path}: group number {number} is also used by {numbers[number]}")
        numbers[number] = path
        entries = parse_list(path, path.read_text(encoding="utf-8").splitlines())
        for lineno, ch in entries:
            if ch in owner:
                other, other_line = owner[ch]
                raise ChannelListError(
                    f"{path}:{lineno}: channel {ch!r} is also in {other}:{other_line}"
                )
            owner[ch] = (path, lineno)
        groups.append(build_group(number, m["name"], path, entries))
    if not groups:
        raise ChannelListError(f"{folder}: no channel lists (<n>_<name>.txt) found")
    groups.sort(key=lambda g: g.number)
    return ChannelCatalog(tuple(groups))
