"""Dagster's default run launcher, with realtime runs started in run workers loaded ahead of time.

Dagster's ``DefaultRunLauncher`` asks the code server to start every run in a new Python
process, which imports Dagster, Polars and n2w and opens the instance before the run does any
work: 2.2 s of a realtime row's delay on an idle machine, 6.3 s beside a ship-week backfill
(docs/realtime.md#latency), more than reading, pivoting and writing the minute. This launcher
keeps ``spares`` workers (``python -m n2w_pipeline.warm_worker``) that have already done all
that, and hands each run tagged ``warm_tag`` (the realtime sensor's runs) to one of them; a new
spare then starts in the background, off the rows' path. Every other run, and a realtime run
when no spare is ready, is launched by ``DefaultRunLauncher`` as usual. The spares are started
when this process launches its first run (in the daemon: the day products' first ticks at
start-up request runs), so usually before the first realtime run.

Configured in ``dagster.yaml`` (``run_launcher``). A worker runs its run exactly as ``dagster api
execute_run`` does; this process watches it like Dagster's code server watches its run
processes: a worker that exits before its run has finished fails the run (the realtime sensor
then requests its hours again). Terminating such a run from the UI interrupts the worker
(SIGTERM, which Dagster turns into a cancellation). Spares hold no run and no lock; one older
than ``max_idle_seconds`` is replaced, so a worker runs code at most that old (an upgrade of
n2w restarts the daemon anyway).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from dagster import Field, IntSource, StringSource
from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext
from dagster._serdes import ConfigurableClassData

PID_TAG = "n2w/run_worker_pid"
HOST_TAG = "n2w/run_worker_host"
WATCH_SECONDS = 1.0


class _Spare:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def retire(self) -> None:
        """Close its input: a worker without a run exits by itself."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass


class WarmRunLauncher(DefaultRunLauncher):
    """Launches runs tagged ``warm_tag`` into workers loaded ahead of time, others as Dagster does."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, warm_tag: str = "n2w/realtime",
                 spares: int = 2, max_idle_seconds: int = 600) -> None:
        super().__init__(inst_data=inst_data)
        self.warm_tag = warm_tag
        self.spares = max(0, spares)
        self.max_idle_seconds = max_idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Spare] = []
        self._running: dict[str, subprocess.Popen] = {}
        self._watcher: threading.Thread | None = None
        self._closed = False

    @classmethod
    def config_type(cls) -> dict:
        return {
            "warm_tag": Field(StringSource, is_required=False, default_value="n2w/realtime",
                              description="runs with this tag start in a worker loaded ahead of time"),
            "spares": Field(IntSource, is_required=False, default_value=2,
                            description="workers kept loaded (0: launch every run as Dagster does)"),
            "max_idle_seconds": Field(IntSource, is_required=False, default_value=600,
                                      description="a spare idle for longer is replaced"),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData,
                          config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    # launching

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        warm = self.spares > 0 and self.warm_tag in run.tags
        if not warm or not self._launch_warm(run):
            super().launch_run(context)
        if self.spares:  # the first run this process launches (the daemon's start-up runs) starts them
            self._fill()

    def _launch_warm(self, run) -> bool:  # noqa: ANN001 (DagsterRun)
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        origin = run.job_code_origin
        if origin is None or origin.executable_path != sys.executable:
            return False  # a code location of another Python: Dagster's way
        args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        while (spare := self._take()) is not None:
            try:
                spare.proc.stdin.write(serialize_value(args) + "\n")
                spare.proc.stdin.close()
            except (OSError, ValueError):  # it died while idle: try the next one
                continue
            pid = spare.proc.pid
            self._instance.add_run_tags(run.run_id, {PID_TAG: str(pid), HOST_TAG: socket.gethostname()})
            self._instance.report_engine_event(
                f"Launched into run worker pid {pid}, loaded {time.monotonic() - spare.started:.0f} s "
                "ahead (n2w_pipeline.run_launcher).", run, cls=self.__class__)
            with self._lock:
                self._running[run.run_id] = spare.proc
                self._watch()
            return True
        return False

    def _take(self) -> _Spare | None:
        with self._lock:
            while self._idle:
                spare = self._idle.pop(0)
                if spare.alive() and time.monotonic() - spare.started <= self.max_idle_seconds:
                    return spare
                spare.retire()
        return None

    def _fill(self) -> None:
        """Start spares until ``spares`` are idle (their loading runs in their own process)."""
        from dagster._serdes import serialize_value

        with self._lock:
            if self._closed:
                return
            self._idle = [s for s in self._idle if s.alive()]
            ref = serialize_value(self._instance.get_ref())
            while len(self._idle) < self.spares:
                proc = subprocess.Popen([sys.executable, "-m", "n2w_pipeline.warm_worker"],
                                        stdin=subprocess.PIPE, text=True)
                proc.stdin.write(ref + "\n")
                proc.stdin.flush()
                self._idle.append(_Spare(proc))

    # watching, as Dagster's code server watches its run processes

    def _watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch_loop, name="n2w-run-workers", daemon=True)
            self._watcher.start()

    def _watch_loop(self) -> None:
        from dagster._utils import get_run_crash_explanation

        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                ended = {rid: p.returncode for rid, p in self._running.items() if p.poll() is not None}
                for rid in ended:
                    del self._running[rid]
                if not self._running and not ended:
                    self._watcher = None
                    return
            for run_id, code in ended.items():
                run = self._instance.get_run_by_id(run_id)
                if run is None or run.is_finished:
                    continue
                message = get_run_crash_explanation(prefix=f"Run worker for {run_id}", exit_code=code)
                self._instance.report_engine_event(message, run, cls=self.__class__)
                self._instance.report_run_failed(run)

    # terminating (from any process: the worker is found by the run's tags)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is None or PID_TAG not in run.tags:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        if run.tags.get(HOST_TAG) != socket.gethostname():
            host = run.tags.get(HOST_TAG)
            self._instance.report_engine_event(f"Cannot terminate: its run worker runs on {host}.", run,
                                               cls=self.__class__)
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(int(run.tags[PID_TAG]), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def dispose(self) -> None:
        with self._lock:
            self._closed = True
            for spare in self._idle:
                spare.retire()
            self._idle = []
        super().dispose()
