"""The job ``n2w backfill`` runs when its steps go to Celery workers.

A worker rebuilds the job it is asked to run from a code pointer (module + function),
so ``n2w backfill`` cannot hand it the in-memory job ``dg.materialize`` builds: it runs
``dg.execute_job(dg.reconstructable(wide_backfill_job), …)`` instead, and every worker
calls ``wide_backfill_job()`` itself, with its own ``N2W_*`` settings (which must match
the launcher's: same schema, ships, channel lists). The job holds only the wide assets
and their checks, with the code location's executor and database resource; it is not
part of the code location (no job page offering a backfill that would ignore ranges).
"""

from __future__ import annotations

import dagster as dg

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.executor import executor_def
from n2w_pipeline.defs.resources import database_resource
from n2w_pipeline.defs.wide_assets import build_wide_assets

JOB_NAME = "n2w_backfill"


def wide_backfill_job() -> dg.JobDefinition:
    """The wide assets as one job, from this process's ``N2W_*`` settings."""
    settings = Settings.from_env()
    wide = build_wide_assets(settings, load_catalog(settings.channel_lists_dir))
    job = dg.define_asset_job(JOB_NAME, selection=dg.AssetSelection.assets(wide))
    defs = dg.Definitions(assets=[wide], jobs=[job], resources={"n2w_db": database_resource()},
                          executor=executor_def(settings))
    return defs.resolve_job_def(JOB_NAME)
