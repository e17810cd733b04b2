"""Resources: the databases n2w reads and writes."""


import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.database import database_url
from n2w_pipeline.storage.pooling import require_session_pooling


class N2WDatabase(dg.ConfigurableResource):
    """PostgreSQL holding the wide tables (``url``) and the narrow table (``source_url``).

    ``url`` comes from the ``N2W_DATABASE_URL`` environment variable, ``source_url``
    from ``N2W_SOURCE_URL`` and ``source_primary_url`` (where the narrow table's writers run,
    when the source is a replica) from ``N2W_SOURCE_PRIMARY_URL`` (shown in the UI by name only);
    without ``N2W_DATABASE_URL`` n2w's embedded PostgreSQL under ``N2W_STATE_DIR`` is used, and
    without a source URL the narrow table is read from the same database.
    """

    url: str | None = None
    source_url: str | None = None
    source_primary_url: str | None = None

    def resolve_url(self, settings: Settings) -> str:
        """The data database: wide tables, n2w's own tables."""
        if self.url:
            require_session_pooling(self.url)  # a transaction pooler: refuse, saying why
            return self.url
        return database_url(settings)

    def resolve_source_url(self, settings: Settings) -> str:
        """The database the narrow table is read from."""
        return self.source_url or settings.source_url or self.resolve_url(settings)

    def resolve_writers_url(self, settings: Settings) -> str:
        """The server where the narrow table's writers run (``N2W_SOURCE_PRIMARY_URL``, else
        the source): the realtime sensor reads their open transactions there."""
        return self.source_primary_url or settings.source_primary_url or self.resolve_source_url(settings)


def database_resource() -> N2WDatabase:
    import os

    kw = {}
    if os.environ.get("N2W_DATABASE_URL"):
        kw["url"] = dg.EnvVar("N2W_DATABASE_URL")
    if os.environ.get("N2W_SOURCE_URL"):
        kw["source_url"] = dg.EnvVar("N2W_SOURCE_URL")
    if os.environ.get("N2W_SOURCE_PRIMARY_URL"):
        kw["source_primary_url"] = dg.EnvVar("N2W_SOURCE_PRIMARY_URL")
    return N2WDatabase(**kw)


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
