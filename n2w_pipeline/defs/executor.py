"""Where the steps of n2w's runs execute: Dagster's default executor, or Celery workers.

``N2W_EXECUTOR=celery`` sends the wide-table step of every run that holds it to the
``dagster-celery`` executor (the Dagster-maintained integration) with
``N2W_CELERY_BROKER`` as broker and ``N2W_CELERY_BACKEND`` (default: the broker) as result
backend, read from the environment when the run starts so that no URL (or password)
lands in run config or logs; other runs keep Dagster's default executor. The run
worker — a process the daemon launches, or ``n2w backfill`` itself — still orchestrates
the run: it claims the step's slot of the ``n2w_database`` pool, submits
the step to the broker, waits for a worker's result and frees the slot. So the pool caps
the steps in flight whatever the number of workers (``docs/scaling.md``).

Worker and launcher must agree on the Celery settings below; both take them from
``celery_config`` (``n2w worker`` builds its app from it).

- ``task_acks_late`` with a prefetch of one: a worker takes a step only when a slot of
  its own is free and acknowledges it when the step has ended. If the whole worker dies
  (machine lost, ``kill -9`` of its process group), the unacknowledged step goes back to
  the queue after ``N2W_CELERY_VISIBILITY_TIMEOUT`` seconds and another worker runs it
  again: each slice is one transaction and rewriting a slice is idempotent, so the rerun
  finishes the run with nothing lost. Keep the timeout above the longest step (a run of
  ``N2W_RUN_HOURS`` hours), or a slow step is started a second time while it still runs.
- ``task_reject_on_worker_lost`` stays off: when only the process running the step dies
  (the OOM killer, a segfault) the worker reports the task failed (``WorkerLostError``)
  and the run fails with that message instead of looping on a step that kills its
  worker every time; re-running (``n2w backfill`` again, or re-execute in the UI)
  resumes it.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from n2w_pipeline.config import Settings

BROKER_ENV = "N2W_CELERY_BROKER"
BACKEND_ENV = "N2W_CELERY_BACKEND"

IN_PROCESS_CONFIG: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}


def uses_celery(settings: Settings) -> bool:
    return settings.executor == "celery"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the executor (launcher side) and ``n2w worker``."""
    timeout = settings.celery_visibility_timeout
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": False,
        "broker_transport_options": {
            "visibility_timeout": timeout,
            # look for steps of dead workers every few seconds (kombu: every 100 s)
            "unacked_restore_interval": max(1, min(10, timeout // 10)),
            "unacked_restore_throttle": 1,
            # dagster-celery's defaults: give up publishing after a few quick retries
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "result_expires": 7 * 24 * 3600,
    }


def broker_problem(url: str, timeout: float = 3.0) -> str | None:
    """None if the broker at ``url`` answers, else one line saying why not (no password)."""
    from kombu import Connection

    from n2w_pipeline.database import redact

    try:
        with Connection(url, connect_timeout=timeout,
                        transport_options={"socket_connect_timeout": timeout}) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (f"Celery broker {redact(url)} ({BROKER_ENV}) is not reachable: {reason}. "
                "Start it (e.g. `redis-server`) or fix the URL.")
    return None


def _celery_executor_class():  # noqa: ANN202 - defined lazily: dagster-celery is imported on use
    from dagster_celery.executor import CeleryExecutor

    class CheckedCeleryExecutor(CeleryExecutor):
        """dagster-celery's executor, plus two things n2w needs:

        - a broker that is down when the run starts fails the run with one clear line,
          not a publish traceback after the retries;
        - when the run's orchestration ends, its ``n2w_database`` pool slots are freed.
          dagster-celery frees a step's slot when the worker returns the step's success or
          failure; a task that died with its worker (``WorkerLostError``) returns neither,
          and its slot would stay claimed for good, shrinking the pool by one each time.
          By the time the loop has ended, every task it submitted has returned.
        """

        def execute(self, plan_context, execution_plan):  # noqa: ANN001, ANN201
            problem = broker_problem(self.broker)
            if problem:
                raise BrokerDown(problem)
            try:
                yield from super().execute(plan_context, execution_plan)
            finally:
                storage = plan_context.instance.event_log_storage
                if storage.supports_global_concurrency_limits:
                    storage.free_concurrency_slots_for_run(plan_context.run_id)

    return CheckedCeleryExecutor


class BrokerDown(dg.DagsterError):
    """The Celery broker did not answer when a run started."""


WIDE_STEP = "narrow_to_wide"
"""The node of the wide-table multi-asset (``defs/wide_assets.py``): the step sent to Celery."""


def celery_executor_def(settings: Settings) -> dg.ExecutorDefinition:
    """n2w's executor with ``N2W_EXECUTOR=celery``: dagster-celery's for runs holding the
    wide-table step, Dagster's default for every other run.

    Only the wide-table step is meant for the workers: corrections read files from
    ``N2W_MIGRATION_DIR`` and exports write ``N2W_EXPORT_DIR`` and the embedded ClickHouse
    on the daemon's machine, so their runs keep executing there. (Those assets are
    partitioned differently from the wide assets, so a run never holds both.) The config
    schema is the default executor's (``in_process`` / ``multiprocess``): run config written
    for it stays valid, and is used for the runs that stay local. The broker and backend
    URLs are read from N2W_CELERY_BROKER / N2W_CELERY_BACKEND when a run starts, never
    stored in run config.
    """
    from dagster._core.definitions.executor_definition import multi_or_in_process_executor
    from dagster._core.execution.retries import RetryMode

    default = multi_or_in_process_executor

    def requirements(config):  # noqa: ANN001, ANN202 - Dagster's requirements hook
        # a run may go to Celery, which needs a reconstructable job and a persistent instance
        return dg.multiple_process_executor_requirements()

    @dg.executor(name="n2w", config_schema=default.config_schema, requirements=requirements)
    def n2w_executor(init_context: dg.InitExecutorContext):  # noqa: ANN202
        if not runs_wide_step(init_context.job.get_definition()):
            return default.executor_creation_fn(init_context)
        broker = os.environ.get(BROKER_ENV)
        if not broker:
            raise BrokerDown(f"N2W_EXECUTOR=celery but {BROKER_ENV} is not set in this run's process")
        return _celery_executor_class()(
            broker=broker,
            backend=os.environ.get(BACKEND_ENV) or broker,
            config_source=celery_config(settings),
            retries=RetryMode.from_config({"enabled": {}}),
        )

    return n2w_executor


def runs_wide_step(job: dg.JobDefinition) -> bool:
    """Whether ``job`` (a run's job, subset to its selection) executes the wide-table step."""
    return WIDE_STEP in {node.name for node in job.nodes_in_topological_order}


def executor_def(settings: Settings) -> dg.ExecutorDefinition | None:
    """The code location's executor: None (Dagster's default) or n2w's Celery dispatcher."""
    return celery_executor_def(settings) if uses_celery(settings) else None


def step_run_config(settings: Settings) -> dict[str, Any]:
    """Run config for runs n2w requests itself (sensors): in-process under Dagster's
    default executor (one step: a second process would only cost start-up), nothing to
    choose under Celery (the step goes to a worker)."""
    return {} if uses_celery(settings) else dict(IN_PROCESS_CONFIG)
