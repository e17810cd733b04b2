"""Resources: the database n2w reads and writes."""


import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.database import database_url
from n2w_pipeline.storage.pooling import require_session_pooling


class N2WDatabase(dg.ConfigurableResource):
    """PostgreSQL holding the narrow table and the wide tables.

    ``url`` comes from the ``N2W_DATABASE_URL`` environment variable (shown in the UI by
    name only); when unset, n2w's embedded PostgreSQL under ``N2W_STATE_DIR`` is used.
    """

    url: str | None = None

    def resolve_url(self, settings: Settings) -> str:
        if self.url:
            require_session_pooling(self.url)  # a transaction pooler: refuse, saying why
            return self.url
        return database_url(settings)


def database_resource() -> N2WDatabase:
    import os

    if os.environ.get("N2W_DATABASE_URL"):
        return N2WDatabase(url=dg.EnvVar("N2W_DATABASE_URL"))
    return N2WDatabase()


class N2WClickHouse(dg.ConfigurableResource):
    """ClickHouse the exports load and ``n2w olap`` queries.

    ``url`` (from ``N2W_CLICKHOUSE_URL``, shown in the UI by name only): an existing server
    through clickhouse-connect, ``http[s]://user:password@host:8123/database``. Unset: the
    embedded chDB with its data under ``path`` (``N2W_CLICKHOUSE_PATH``, default
    ``<N2W_STATE_DIR>/clickhouse``).
    """

    url: str | None = None
    path: str | None = None

    def open(self, settings: Settings, log=None):  # noqa: ANN001, ANN201 - a context manager
        from dataclasses import replace
        from pathlib import Path

        from n2w_pipeline.export.day import clickhouse_backend

        if self.path:
            settings = replace(settings, clickhouse_path=Path(self.path))
        return clickhouse_backend(settings, self.url or None, log)


def clickhouse_resource() -> N2WClickHouse:
    import os

    kw = {}
    if os.environ.get("N2W_CLICKHOUSE_URL"):
        kw["url"] = dg.EnvVar("N2W_CLICKHOUSE_URL")
    if os.environ.get("N2W_CLICKHOUSE_PATH"):
        kw["path"] = dg.EnvVar("N2W_CLICKHOUSE_PATH")
    return N2WClickHouse(**kw)
