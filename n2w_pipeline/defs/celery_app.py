"""The Celery app of ``n2w worker``: dagster-celery's step task with n2w's settings.

The app is dagster-celery's own (``make_app``: its queue, routes and priorities) with the
broker, result backend and options of ``defs/executor.celery_config``, so the worker
and the executor that submits steps agree. Every step a worker runs is logged as one
line when it starts and one when it ends (run id, step, outcome, seconds), beside the
Dagster run's own engine event naming the worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, signals

from n2w_pipeline.config import Settings
from n2w_pipeline.defs.executor import celery_config

log = logging.getLogger("n2w.worker")
_started: dict[str, float] = {}


def build_app(settings: Settings) -> Celery:
    """dagster-celery's app with its ``execute_plan`` task, configured for n2w."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    if not settings.celery_broker:
        raise ValueError("n2w worker needs N2W_CELERY_BROKER, e.g. redis://host:6379/0")
    args = CeleryExecutor.for_cli(
        broker=settings.celery_broker,
        backend=settings.celery_backend or settings.celery_broker,
        config_source=celery_config(settings),
    ).app_args()
    app = make_app(args)
    create_task(app)
    signals.task_prerun.connect(_step_started, weak=False)
    signals.task_postrun.connect(_step_ended, weak=False)
    signals.worker_process_init.connect(_warm_up, weak=False)
    signals.after_setup_logger.connect(_quiet_loggers, weak=False)
    return app


def _warm_up(**_: Any) -> None:
    """In each new pool process: import the code location and Dagster's PostgreSQL
    storage now, not when the first step arrives (~5-10 s of imports on a busy 2-core
    machine, which a realtime step should not wait for)."""
    try:
        import dagster_postgres  # noqa: F401

        import n2w_pipeline.definitions  # noqa: F401
        import n2w_pipeline.defs.backfill_job  # noqa: F401
    except Exception:  # noqa: BLE001 - the step will report the same error in its run
        log.exception("n2w worker: warming up failed")


def _quiet_loggers(**_: Any) -> None:
    """The worker log shows steps, warnings and errors; not the per-slice progress records
    (they are in each run's log), alembic's plugin list or each result's serialized events."""
    for name in ("n2w.progress", "alembic", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _describe(kwargs: dict[str, Any] | None) -> str:
    """``run <id> step <key>`` from an execute_plan task's arguments."""
    try:
        packed = (kwargs or {})["execute_step_args_packed"]
        from dagster._grpc.types import ExecuteStepArgs
        from dagster._serdes import unpack_value

        args = unpack_value(packed, as_type=ExecuteStepArgs)
        steps = ", ".join(args.step_keys_to_execute or [])
        return f"run {args.run_id} step {steps}"
    except Exception:  # noqa: BLE001 - a log line must never fail a task
        return "a task"


def _step_started(task_id: str | None = None, kwargs: dict | None = None, **_: Any) -> None:
    _started[task_id or ""] = time.perf_counter()
    log.info("n2w worker: %s started", _describe(kwargs))


def _step_ended(task_id: str | None = None, kwargs: dict | None = None, state: str | None = None,
                retval: Any = None, **_: Any) -> None:
    seconds = time.perf_counter() - _started.pop(task_id or "", time.perf_counter())
    events = retval if isinstance(retval, list) else []
    if any('"STEP_FAILURE"' in str(e) for e in events):
        outcome = "step failed"
    elif any('"STEP_SUCCESS"' in str(e) for e in events):
        outcome = "step succeeded"
    else:
        outcome = f"task {state}"
    log.info("n2w worker: %s ended: %s in %.1f s", _describe(kwargs), outcome, seconds)
