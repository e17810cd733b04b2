"""``n2w worker``: a Celery worker that runs n2w's steps (with ``N2W_EXECUTOR=celery``)."""

from __future__ import annotations

import argparse
import os
import sys

from n2w_pipeline.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    cores = os.cpu_count() or 2
    p = sub.add_parser(
        "worker",
        help="run a Celery worker for the wide-table steps (N2W_EXECUTOR=celery)",
        description="Start a Celery worker (dagster-celery's step task) on this machine. With "
        "N2W_EXECUTOR=celery, Dagster runs (UI backfills, the sensors, `n2w backfill`) send their "
        "steps through the broker N2W_CELERY_BROKER and a worker runs them. Start workers on any "
        "machine that has the project installed and the same N2W_* settings as the launcher "
        "(N2W_DATABASE_URL, N2W_SOURCE_URL, N2W_CELERY_BROKER, schema, ships, channel lists). The "
        "n2w_database pool still caps the steps in flight, whatever the number of workers. Stop "
        "with Ctrl-C (a warm shutdown: running steps finish first). See docs/scaling.md.",
    )
    p.add_argument("--concurrency", type=int, default=max(1, cores // 2), metavar="N",
                   help=f"steps this worker runs at once (default: half the cores, here "
                   f"{max(1, cores // 2)}); a step keeps about 1.5 cores busy")
    p.add_argument("--queue", default=None, metavar="Q",
                   help="Celery queue to take steps from (default: N2W_CELERY_QUEUE, else "
                   "dagster-celery's `dagster`); the launcher sends the wide-table steps to "
                   "N2W_CELERY_QUEUE, so give n2w's workers a queue of their own on a shared broker")
    p.add_argument("--name", default=None,
                   help="worker name, unique per host (default n2w-<pid>); shown in each run's "
                   "log as the worker that ran the step")
    p.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from n2w_pipeline.database import redact, source_url
    from n2w_pipeline.defs.executor import broker_problem
    from n2w_pipeline.instance import apply_dagster_env

    if args.concurrency < 1:
        raise SystemExit("n2w worker: --concurrency must be >= 1")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise SystemExit(f"n2w worker: {exc}") from None
    if not settings.celery_broker:
        raise SystemExit("n2w worker: set N2W_CELERY_BROKER to the broker's URL, e.g. redis://host:6379/0")
    problem = broker_problem(settings.celery_broker)
    if problem:
        raise SystemExit(f"n2w worker: {problem}")
    if settings.executor != "celery":
        print("n2w worker: note: N2W_EXECUTOR is not `celery` here; the launcher (daemon, "
              "`n2w backfill`) needs it to send steps to workers", file=sys.stderr)
    env = apply_dagster_env(settings)  # the same instance and databases as the launcher
    name = args.name or f"n2w-{os.getpid()}"
    queue = args.queue or settings.celery_queue
    print(f"n2w worker {name}: queue {queue}, concurrency {args.concurrency}")
    print(f"  broker:   {redact(settings.celery_broker)}")
    print(f"  data:     {redact(env['N2W_DATABASE_URL'])}")
    print(f"  source:   {redact(source_url(settings))}")
    print(f"  instance: {redact(env['N2W_DAGSTER_PG_URL'])}")
    sys.stdout.flush()

    from n2w_pipeline.defs.celery_app import build_app

    app = build_app(settings)
    app.worker_main([
        "worker", "--loglevel", args.loglevel, "-Q", queue, "--concurrency", str(args.concurrency),
        "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
    ])
    return 0
