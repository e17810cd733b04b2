"""Log files: routed by kind of work and ship, rotated by size by several processes at once
without a line lost or torn."""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
from pathlib import Path

from n2w_pipeline.config import Settings
from n2w_pipeline.instance import write_instance_yaml
from n2w_pipeline.logs import kind_of, log_file, rotating_file, ship_of

LINES, WRITERS, MAX_BYTES = 400, 3, 4096
LINE = re.compile(r"^\S+ \S+ INFO \[(\d+)\] n2w\.test: writer (\d) line (\d+) (x+)$")


def _writer(path: str, n: int) -> None:
    log = logging.getLogger("n2w.test")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(rotating_file(Path(path), MAX_BYTES, backups=200))
    for i in range(LINES):
        log.info(f"writer {n} line {i} " + "x" * (20 + i % 50))


def test_several_processes_rotate_one_file_without_losing_a_line(tmp_path: Path):
    path = tmp_path / "logs" / "backfill" / "IMO9976903.log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), n)) for n in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    files = sorted(path.parent.glob("IMO9976903.log*"))
    assert len(files) > 5, "the size limit must have rotated the file several times"
    seen: dict[int, list[int]] = {n: [] for n in range(WRITERS)}
    for f in files:
        assert f.stat().st_size <= MAX_BYTES + 200, f  # rotated before it grew past the limit
        for line in f.read_text().splitlines():
            m = LINE.match(line)
            assert m, f"torn or interleaved line in {f.name}: {line!r}"
            assert len(m.group(4)) == 20 + int(m.group(3)) % 50
            seen[int(m.group(2))].append(int(m.group(3)))
    for n in range(WRITERS):  # every line of every writer, once
        assert sorted(seen[n]) == list(range(LINES)), n


def test_runs_are_routed_by_kind_and_ship(tmp_path: Path):
    s = Settings(state_dir=tmp_path / "state")
    backfill = {"dagster/asset_partition_range_start": "2025-03-01-00:00|IMO9976903",
                "dagster/asset_partition_range_end": "2025-03-01-05:00|IMO9976903", "n2w/kind": "backfill"}
    assert (kind_of(backfill), ship_of(backfill, s.ships)) == ("backfill", "IMO9976903")
    realtime = {"n2w/realtime": "new", "dagster/asset_partition_range_start": "2025-03-01-00:00|IMO9976903",
                "dagster/asset_partition_range_end": "2025-03-01-00:00|IMO9976915"}
    assert (kind_of(realtime), ship_of(realtime, s.ships)) == ("realtime", None)
    assert kind_of({"n2w/sha256": "ab", "n2w/ship": "IMO9976915"}) == "corrections"
    day = {"dagster/partition": "2025-03-01|IMO9976903"}
    assert kind_of(day, "__ASSET_JOB", "wide_to_export") == "export"
    assert kind_of({}, "n2w_retention", "drop_expired_partitions") == "retention"
    assert ship_of({"dagster/partition": "2025-03-01|IMO9976903"}, s.ships) == "IMO9976903"
    assert log_file(s, "realtime", None) == tmp_path / "state" / "logs" / "realtime" / "fleet.log"
    assert log_file(s, "export", "../etc") == tmp_path / "state" / "logs" / "export" / "fleet.log"
    custom = Settings.from_env({"N2W_LOG_DIR": str(tmp_path / "elsewhere"), "N2W_LOG_MAX_MB": "5",
                                "N2W_LOG_BACKUPS": "7", "N2W_INSTANCE_RETENTION_DAYS": "9"})
    assert log_file(custom, "backfill", "IMO1") == tmp_path / "elsewhere" / "backfill" / "IMO1.log"
    assert (custom.log_max_mb, custom.log_backups, custom.instance_retention_days) == (5, 7, 9)


def test_instance_yaml_carries_the_tick_retention(tmp_path: Path):
    dest = tmp_path / "dagster.yaml"
    write_instance_yaml(Settings(instance_retention_days=9), dest)
    text = dest.read_text()
    assert text.count("purge_after_days: 9") == 3 and "n2w_pipeline.logs.RunLogFiles" in text
    write_instance_yaml(Settings.from_env({"N2W_INSTANCE_RETENTION_DAYS": "off"}), dest)
    assert dest.read_text().count("purge_after_days: -1") == 3


def _write_instance_yamls(dest: str, rounds: int) -> None:
    for i in range(rounds):
        write_instance_yaml(Settings(instance_retention_days=1 + i % 2), Path(dest))


def test_processes_starting_together_each_write_the_instance_yaml_whole(tmp_path: Path):
    """`n2w worker` twice, or a daemon and a run, starting at once: every process writes
    dagster.yaml (through a temporary file of its own) and none fails; the file is whole."""
    dest = tmp_path / "dagster_home" / "dagster.yaml"
    dest.parent.mkdir()
    procs = [mp.Process(target=_write_instance_yamls, args=(str(dest), 40)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    text = dest.read_text()
    assert text.count("purge_after_days: 1") == 3 or text.count("purge_after_days: 2") == 3
    assert [p.name for p in dest.parent.iterdir()] == ["dagster.yaml"]  # no temporary file left
