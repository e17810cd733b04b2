"""A run worker that is loaded before its run exists: ``python -m n2w_pipeline.warm_worker``.

``WarmRunLauncher`` (``run_launcher.py``) starts one ahead of time. It imports Dagster and the
n2w code location and opens the Dagster instance while nothing waits for it; when a run is
launched it only has to execute it. A run worker started the usual way (a new process per run,
importing everything first) spent 2.2 s of a realtime row's delay on an idle machine and 6.3 s
beside a backfill (docs/realtime.md#latency).

Protocol, one line each on stdin, both serialised by Dagster's serdes:

1. the instance's ``InstanceRef`` (written by the launcher when it starts the worker);
2. the run's ``ExecuteRunArgs`` (written when a run is launched into this worker).

The run is executed exactly as ``dagster api execute_run`` executes it (the same function),
then the process exits. End of input before a run (the launcher retired this worker, or its
process is gone) ends the process without doing anything.
"""

from __future__ import annotations

import os
import sys


def _read_line() -> str | None:
    line = sys.stdin.readline()
    return line.strip() or None


def main() -> int:
    from dagster._cli.api import _execute_run_command_body  # the body of `dagster api execute_run`
    from dagster._core.instance import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts

    ref = _read_line()
    if ref is None:
        return 0
    try:
        import n2w_pipeline.definitions as code_location

        code_location.defs.get_repository_def()  # build the definitions now, not when the run starts
        instance = DagsterInstance.from_ref(deserialize_value(ref, InstanceRef))
    except Exception as exc:  # noqa: BLE001
        # Idle, the launcher skips a dead spare (the next one, or Dagster's way); a run already
        # handed over while this loaded is failed by the launcher's watcher, and owed hours
        # are requested again.
        print(f"n2w warm run worker (pid {os.getpid()}) could not load: {exc}", file=sys.stderr)
        return 1
    with capture_interrupts(), instance:
        line = _read_line()
        if line is None:
            return 0
        args = deserialize_value(line, ExecuteRunArgs)
        # the events are in the instance's event log; nobody reads this process's stream
        return _execute_run_command_body(
            args.run_id, instance, lambda event: None,
            set_exit_code_on_failure=bool(args.set_exit_code_on_failure),
        )


if __name__ == "__main__":
    sys.exit(main())
