"""Correction files on disk: where they are, whether they are well named, whether they changed.

Layout: ``<migration_dir>/<HULL>/<HULL>_<YYYY-MM>[_<tag>].csv``; the hull maps to a ship
through ``settings.hulls``. ``scan_changes`` compares the folder with the sensor's cursor
(sha256, size and mtime per file) and says which files to apply.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from n2w_pipeline.config import Settings

NAME_RE = re.compile(
    r"^(?P<hull>[A-Za-z0-9]+)_(?P<month>[0-9]{4}-(0[1-9]|1[0-2]))(_(?P<tag>[A-Za-z0-9][A-Za-z0-9_-]*))?"
    r"\.csv$"
)


class CorrectionFileError(ValueError):
    """The whole file is rejected; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class CorrectionFile:
    """A well-named correction file: ``key`` is ``HULL/name.csv`` (the partition key)."""

    path: Path
    key: str
    hull: str
    ship: str
    month: str


def locate_file(settings: Settings, path: Path) -> CorrectionFile:
    """Check a file's folder and name; raise ``CorrectionFileError`` saying what is wrong."""
    path = Path(path)
    folder, name = path.parent.name, path.name
    key = f"{folder}/{name}"
    root = Path(settings.migration_dir).resolve()
    inside = path.resolve().parent.parent == root
    if path.resolve().parent == root:
        raise CorrectionFileError(
            f"{name}: not in a hull folder; put it in {settings.migration_dir}/<HULL>/, "
            f"e.g. H2546/H2546_2025-01.csv"
        )
    if folder not in settings.hulls:
        where = "" if inside else f" (in {path.parent})"
        raise CorrectionFileError(
            f"{key}: unknown hull folder {folder!r}{where}; known hulls: "
            f"{', '.join(sorted(settings.hulls))} (N2W_HULLS)"
        )
    m = NAME_RE.match(name)
    if not m:
        raise CorrectionFileError(
            f"{key}: file name must be <HULL>_<YYYY-MM>.csv or <HULL>_<YYYY-MM>_<tag>.csv, "
            f"e.g. {folder}_2025-01.csv"
        )
    if m["hull"] != folder:
        raise CorrectionFileError(f"{key}: file name's hull {m['hull']!r} differs from its folder {folder!r}")
    return CorrectionFile(path, key, folder, settings.hulls[folder], m["month"])


def read_file(settings: Settings, path: Path) -> tuple[CorrectionFile, bytes, str]:
    """Check a file's place and name, then read it: (the file, its bytes, their sha256)."""
    cfile = locate_file(settings, path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CorrectionFileError(f"{cfile.key}: file not found (moved or deleted?)") from None
    return cfile, data, hashlib.sha256(data).hexdigest()


def candidate_paths(folder: Path) -> list[Path]:
    """Every ``*.csv`` under ``folder`` (any depth, case-insensitive), hidden ones excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() == ".csv":
            out.append(p)
    return sorted(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileChange:
    file: CorrectionFile
    sha256: str


@dataclass
class ScanResult:
    """What a sensor tick found: files to apply, bad files, the cursor to store."""

    changed: list[FileChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unchanged: int = 0
    deferred: int = 0
    cursor: dict[str, dict[str, object]] = field(default_factory=dict)


def scan_changes(
    settings: Settings, cursor: Mapping[str, Mapping[str, object]], hash_budget_s: float = 30.0
) -> ScanResult:
    """Compare the migration folder with ``cursor`` (key → {sha256, size, mtime_ns}).

    A file is *changed* when its sha256 differs from the cursor's (new files included);
    the hash is recomputed only when size or mtime moved, so an untouched folder costs a
    ``stat`` per file and a copied-but-identical file is not applied again. Badly placed
    or named files are listed in ``problems`` and never enter the cursor (they are
    reported on every tick until fixed). The returned cursor holds the unchanged files
    plus the changed ones: the caller stores it only together with the run requests.
    Hashing stops after ``hash_budget_s``; the rest is ``deferred`` to the next tick.
    """
    result = ScanResult()
    t0 = time.perf_counter()
    for path in candidate_paths(settings.migration_dir):
        try:
            cf = locate_file(settings, path)
        except CorrectionFileError as e:
            result.problems.append(str(e))
            continue
        st = path.stat()
        old = cursor.get(cf.key)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            result.cursor[cf.key] = dict(old)
            result.unchanged += 1
            continue
        if time.perf_counter() - t0 > hash_budget_s:
            result.deferred += 1
            if old:
                result.cursor[cf.key] = dict(old)
            continue
        sha = file_sha256(path)
        result.cursor[cf.key] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if old and old.get("sha256") == sha:
            result.unchanged += 1
        else:
            result.changed.append(FileChange(cf, sha))
    return result


def dump_cursor(cursor: Mapping[str, object]) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


def load_cursor(text: str | None) -> dict[str, dict[str, object]]:
    if not text:
        return {}
    data = json.loads(text)
    return {k: v for k, v in data.items() if isinstance(v, dict)}
