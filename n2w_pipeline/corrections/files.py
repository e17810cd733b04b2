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


def inside_migration_dir(settings: Settings, path: Path) -> Path:
    """``path`` resolved (symlinks followed) if that is inside ``N2W_MIGRATION_DIR``;
    otherwise ``CorrectionFileError``: n2w never reads a correction from anywhere else."""
    root = Path(settings.migration_dir).resolve()
    real = Path(path).resolve()
    if not real.is_relative_to(root):
        shown = f"{path} (resolves to {real})" if str(real) != str(path) else str(path)
        raise CorrectionFileError(
            f"{shown}: outside the correction folder {settings.migration_dir} (N2W_MIGRATION_DIR); "
            "correction files are read only from inside it, never through '..', an absolute path "
            "or a symlink leading out")
    return real


def key_path(settings: Settings, key: str) -> Path:
    """The file of a correction partition key ``HULL/name.csv``; keys that are absolute, climb
    with ``..`` or resolve outside ``N2W_MIGRATION_DIR`` (a symlink) are refused
    (``CorrectionFileError``) — a key typed into the UI is not trusted."""
    parts = Path(key).parts
    if Path(key).is_absolute() or ".." in parts or len(parts) != 2:
        raise CorrectionFileError(
            f"{key}: not a correction partition key; keys are HULL/<HULL>_<YYYY-MM>.csv inside "
            f"{settings.migration_dir} (N2W_MIGRATION_DIR), without '..' or an absolute path")
    path = Path(settings.migration_dir) / key
    inside_migration_dir(settings, path)
    return path


def locate_file(settings: Settings, path: Path) -> CorrectionFile:
    """Check a file's place and name; raise ``CorrectionFileError`` saying what is wrong."""
    path = Path(path)
    folder, name = path.parent.name, path.name
    key = f"{folder}/{name}"
    root = Path(settings.migration_dir).resolve()
    inside_migration_dir(settings, path)
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
    """A file whose content is new to the sensor: its ``version``-th content (1, 2, …), so a
    file that returns to an earlier content (A → B → A) is a new change, applied again."""

    file: CorrectionFile
    sha256: str
    version: int = 1


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

    A file is *changed* when its sha256 differs from the cursor's (new files included), and
    each change gets the next version number (``v`` in the cursor);
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
        version = int(old.get("v", 1)) if old else 0  # type: ignore[call-overload]
        if old and old.get("sha256") == sha:
            result.unchanged += 1
        else:
            version += 1  # every change of content is a new version, even back to an old one
            result.changed.append(FileChange(cf, sha, version))
        result.cursor[cf.key] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "v": version}
    return result


def dump_cursor(cursor: Mapping[str, object]) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


def load_cursor(text: str | None) -> dict[str, dict[str, object]]:
    if not text:
        return {}
    data = json.loads(text)
    return {k: v for k, v in data.items() if isinstance(v, dict)}
