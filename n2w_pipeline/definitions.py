"""The one Definitions of the n2w code location: assets, checks, sensors, resources."""

from __future__ import annotations

import dagster as dg

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.defs.resources import database_resource
from n2w_pipeline.defs.wide_assets import build_wide_assets


def build_definitions(settings: Settings) -> dg.Definitions:
    catalog = load_catalog(settings.channel_lists_dir)
    wide = build_wide_assets(settings, catalog)
    return dg.Definitions(
        assets=[wide],
        resources={"n2w_db": database_resource()},
    )


defs = build_definitions(Settings.from_env())
