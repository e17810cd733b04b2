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
