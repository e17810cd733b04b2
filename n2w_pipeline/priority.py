"""CPU priority of batch work: backfills yield the CPU to realtime runs on the same machine.

On a machine whose cores a backfill keeps busy, a realtime run (a minute of rows, a second of
work) waits for the CPU behind the backfill's pivots: beside a ship-week backfill its delay
more than doubled (docs/realtime.md#latency). A backfill raises its own niceness
(``N2W_BACKFILL_NICE``, default 10: Linux then gives a nice-0 process about ten times its
share), which costs it nothing when nothing else wants the CPU. On n2w's embedded server the
backfill's server processes follow (``match_server_process``).

Linux keeps a niceness per thread: every thread the process has is changed, and threads
started later inherit it from the thread that starts them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def lower_priority(nice: int) -> int | None:
    """Give every thread of this process at least niceness ``nice`` (0: leave it alone).
    Returns the process's niceness afterwards, or None where priorities are not supported."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return None
    tasks = Path("/proc/self/task")
    ids = [int(p.name) for p in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in ids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # a thread that ended meanwhile
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)


def match_server_process(pid: int, host: str | None) -> None:
    """Give the server process ``pid`` of one of this process's connections this process's
    niceness, when it is higher and the server is on this machine (reached through a unix
    socket: n2w's embedded server). There the backfill's server side (COPY out of the narrow
    table, COPY into the wide tables, about half of the two cores beside a realtime run) yields
    too. Elsewhere, or without the right to change it, nothing happens."""
    if not host or not host.startswith("/") or not hasattr(os, "getpriority"):
        return
    with contextlib.suppress(OSError):
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > 0 and os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
