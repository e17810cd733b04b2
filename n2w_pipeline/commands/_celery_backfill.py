"""`n2w backfill` with ``N2W_EXECUTOR=celery``: each run's step executes on a Celery worker.

This process (or one spawned process per parallel run) is each run's orchestrator:
``dg.execute_job`` on the reconstructable ``wide_backfill_job`` with the Celery executor
claims the step's ``n2w_database`` pool slot, submits the step to the broker and waits for
a worker's result. The workers log progress into the run's event log, so the bar follows
the runs there (``parse_progress`` on each new run-log line, every second) instead of
through a logging handler in this process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

from n2w_pipeline.commands._common import (
    BackfillFailed,
    BackfillProgress,
    Run,
    run_summary,
    run_tags,
    task_name,
)
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.alerts import run_error

BACKFILL_TAG = "n2w/backfill"
"""Run tag: one id per `n2w backfill` command, so that its runs can be followed."""
TASK_TAG = "n2w/backfill_task"
POLL_SECONDS = 1.0


def check_ready(settings: Settings) -> None:
    """Exit before the first run, with one line, when Celery cannot work."""
    from n2w_pipeline.defs.executor import broker_problem

    if not settings.celery_broker:
        raise SystemExit("n2w backfill: N2W_EXECUTOR=celery needs N2W_CELERY_BROKER, e.g. redis://host:6379/0")
    problem = broker_problem(settings.celery_broker)
    if problem:
        raise SystemExit(f"n2w backfill: {problem}")
    if Settings.from_env() != settings:
        raise SystemExit(
            "n2w backfill: "
            "with N2W_EXECUTOR=celery the workers rebuild the job from N2W_* environment "
            "variables; the settings given differ from this process's environment"
        )


def run_celery(
    runs: Sequence[Run],
    parallel: int,
    progress: BackfillProgress,
    finished: Callable[[Run, dict], None],
) -> None:
    """Run ``runs``, ``parallel`` at a time, their steps on Celery workers."""
    backfill_id = uuid.uuid4().hex[:12]
    follower = _Follower(backfill_id, progress)
    follower.start()
    try:
        if parallel == 1:
            for run in runs:
                finished(run, celery_run(run, backfill_id))
        else:
            _parallel(runs, parallel, backfill_id, finished)
    finally:
        follower.stop()


def celery_run(run: Run, backfill_id: str) -> dict:
    """One Dagster run for ``run``; raises BackfillFailed with the run's error."""
    import dagster as dg

    from n2w_pipeline.defs.backfill_job import wide_backfill_job
    from n2w_pipeline.logs import dagster_console

    t0 = time.perf_counter()
    tags = run_tags(run) | {BACKFILL_TAG: backfill_id, TASK_TAG: task_name(run)}
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(wide_backfill_job), instance,
                                run_config=dagster_console(), tags=tags)
        if not result.success:
            raise BackfillFailed(
                f"run {result.run_id} ({task_name(run)}) "
                f"failed: {run_error(instance, result.run_id)}")
    return run_summary(run, result, t0)


def _parallel(runs: Sequence[Run], parallel: int, backfill_id: str,
              finished: Callable[[Run, dict], None]) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    error: BaseException | None = None
    with ProcessPoolExecutor(parallel, mp_context=ctx) as pool:  # inherits os.environ
        futures = {pool.submit(celery_run, run, backfill_id): run for run in runs}
        for fut in as_completed(futures):
            try:
                finished(futures[fut], fut.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if error is None:
                    error = exc
                    for f in futures:
                        f.cancel()
    if error is not None:
        raise error


class _Follower(threading.Thread):
    """Reads the new run-log lines of this backfill's started runs every second and feeds
    their slice progress to the bar."""

    def __init__(self, backfill_id: str, progress: BackfillProgress) -> None:
        super().__init__(daemon=True, name="n2w-progress")
        self.backfill_id = backfill_id
        self.progress = progress
        self.cursors: dict[str, str | None] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            while not self._halt.wait(POLL_SECONDS):
                try:
                    self._poll(instance)
                except Exception:  # noqa: BLE001, S112 - the bar must never break a backfill
                    continue

    def _poll(self, instance) -> None:  # noqa: ANN001 - dagster.DagsterInstance
        import dagster as dg

        from n2w_pipeline.defs.wide_assets import parse_progress

        started = dg.RunsFilter(tags={BACKFILL_TAG: self.backfill_id},
                                statuses=[dg.DagsterRunStatus.STARTED])
        for run in instance.get_runs(filters=started):
            conn = instance.get_records_for_run(run.run_id, cursor=self.cursors.get(run.run_id))
            self.cursors[run.run_id] = conn.cursor
            for rec in conn.records:
                found = parse_progress(rec.event_log_entry.user_message)
                if found is not None:
                    self.progress.update(run.tags[TASK_TAG], *found)
