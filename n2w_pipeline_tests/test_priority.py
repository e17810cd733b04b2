"""Backfills lower their CPU priority (``n2w_pipeline/priority.py``): every thread the process
already has, and threads it starts later. In a subprocess: niceness cannot be raised back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from n2w_pipeline.config import SettingError, Settings

PROBE = """
import os, threading
from pathlib import Path
from n2w_pipeline.priority import lower_priority
gate = threading.Event()
early = threading.Thread(target=gate.wait); early.start()   # a thread started before
print(lower_priority({nice}))
late = threading.Thread(target=gate.wait); late.start()     # and one started after
print(sorted(os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in Path('/proc/self/task').iterdir()))
gate.set()
"""


@pytest.mark.parametrize("nice", [7, 0])
def test_every_thread_of_the_process_is_lowered(nice):
    base = os.getpriority(os.PRIO_PROCESS, 0)  # inherited by the probe (another test may have lowered it)
    out = subprocess.run([sys.executable, "-c", PROBE.format(nice=nice)], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    want = max(base, nice)
    assert out[0] == (str(want) if nice else "None")
    assert out[1] == str([want if nice else base] * 3)


def test_the_setting_is_checked():
    assert Settings.from_env({"N2W_BACKFILL_NICE": "0"}).backfill_nice == 0
    assert Settings.from_env({}).backfill_nice == 10
    with pytest.raises(SettingError, match="N2W_BACKFILL_NICE must be 0..19, got 25"):
        Settings.from_env({"N2W_BACKFILL_NICE": "25"})


LANE = """
import sys
from n2w_pipeline.config import Settings
from n2w_pipeline.lanes import Lane
from n2w_pipeline.priority import lower_priority
lower_priority({nice})
conn, reader = Lane({url!r}, {url!r}, Settings(), ["a", "b"]).open()
print(conn.info.backend_pid, reader.backend_pid, flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("nice", [6, 0])
def test_a_backfills_server_processes_follow_it_on_a_local_server(pg_url, nice):
    """A lane's writer and reader backends take the niceness of the process that opened them
    (a backfill's), when the server is reached through a unix socket; a nice-0 process leaves
    them alone."""
    from psycopg.conninfo import conninfo_to_dict

    if not str(conninfo_to_dict(pg_url).get("host", "")).startswith("/"):
        pytest.skip("the test server is not on a unix socket of this machine")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    proc = subprocess.Popen([sys.executable, "-c", LANE.format(nice=nice, url=pg_url)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        want = max(base, nice)  # the backends follow the process, whatever lowered it
        assert [os.getpriority(os.PRIO_PROCESS, p) for p in pids] == [want, want]
    finally:
        proc.communicate("\n", timeout=30)
