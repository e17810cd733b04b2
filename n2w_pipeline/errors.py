"""What a failed ``n2w`` command prints: one line that says what is wrong and where to look,
never a password, never a traceback (``n2w --debug COMMAND`` shows it). Used by ``cli.main``.

Dagster wraps the error raised inside a run (``DagsterExecutionStepExecutionError`` →
``user_exception``) and psycopg's messages can span lines or echo a connection string, so
``describe`` first finds the error that matters in the chain, then words it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from n2w_pipeline.dsn import mask_secrets, redact

MAX_CHARS = 1000


class CommandError(Exception):
    """A problem the user can fix, already worded as one line (printed as is)."""


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every error behind it: causes, contexts, Dagster's wrapped user errors."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for attr in ("user_exception", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)


def one_line(text: str) -> str:
    """Whitespace collapsed, secrets masked, at most ``MAX_CHARS``."""
    text = mask_secrets(" ".join(str(text).split()))
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _configured_urls() -> str:
    """The URL settings in use, masked: where a connection error points to."""
    found = [f"{name}={redact(os.environ[name])}" for name in
             ("N2W_DATABASE_URL", "N2W_SOURCE_URL", "N2W_SOURCE_PRIMARY_URL") if os.environ.get(name)]
    if not found:
        return "the embedded server under N2W_STATE_DIR (no N2W_DATABASE_URL)"
    return ", ".join(found)


UNREACHABLE_STATES = ("08", "57P01", "57P02", "57P03")
MISSING_STATES = ("42P01", "3F000")


def _kind(e: BaseException) -> str | None:
    """A short name for the errors worded specially, else None."""
    name = type(e).__name__
    module = type(e).__module__
    if name in ("SettingError", "PoolingModeError", "CommandError", "CorrectionFileError",
                "BrokerDown", "ChannelListError", "RetriesExhausted", "WritersNotVisible"):
        return "as_is"
    if name == "DagsterPostgresException":
        return "instance_down"
    if module.startswith("psycopg"):
        state = str(getattr(e, "sqlstate", None) or "")
        if state in MISSING_STATES or name in ("UndefinedTable", "InvalidSchemaName"):
            return "missing_table"
        if state.startswith(UNREACHABLE_STATES) or name in ("OperationalError", "ConnectionTimeout"):
            return "unreachable"
        return "postgres"
    if module.startswith("sqlalchemy") and name == "OperationalError":
        return "instance_down"
    return None


def describe(exc: BaseException) -> str:
    """One line for a command that failed with ``exc``."""
    for e in chain(exc):
        kind = _kind(e)
        if kind is None:
            continue
        text = str(e) or type(e).__name__
        if kind != "as_is":  # a server message: its first line (the rest quotes the query)
            text = text.strip().splitlines()[0]
        text = one_line(text)
        if kind == "as_is":
            return text
        if kind == "instance_down":
            where = redact(os.environ.get("N2W_DAGSTER_PG_URL", "")) or "its PostgreSQL"
            return f"cannot reach the Dagster instance's database ({where}): {text}; is the server running?"
        if kind == "unreachable":
            ask = "" if "server running" in text else "; is the server running?"
            return f"cannot reach PostgreSQL: {text}{ask} ({_configured_urls()})"
        if kind == "missing_table":
            return (f"{text} — check N2W_SOURCE_SCHEMA / N2W_SOURCE_TABLE (the narrow table) and "
                    f"N2W_SOURCE_URL / N2W_DATABASE_URL ({_configured_urls()})")
        return f"PostgreSQL: {text}"
    shown = exc
    if _wrapper(exc):  # a Dagster wrapper: the error inside it says more
        shown = next((e for e in chain(exc) if not _wrapper(e)), exc)
    return one_line(f"{type(shown).__name__}: {shown}" if _generic(shown) else str(shown))


def _wrapper(e: BaseException) -> bool:
    return type(e).__module__.startswith("dagster")


def _generic(e: BaseException) -> bool:
    """Errors whose message alone does not say what kind of problem it is."""
    return isinstance(e, (KeyError, TypeError, AttributeError, AssertionError, IndexError)) or not str(e)


CONFIGURATION_ERRORS = ("SettingError", "PoolingModeError")


def exit_code(exc: BaseException) -> int:
    """2 for a setting the user must change (a bad N2W_* value, a transaction pooler in
    N2W_DATABASE_URL), 1 for everything else."""
    return 2 if any(type(e).__name__ in CONFIGURATION_ERRORS for e in chain(exc)) else 1
