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
