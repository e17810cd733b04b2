"""Connection strings without their secrets, for output, logs, metadata and errors.

PostgreSQL accepts a password in three places — the URL's ``user:password@``, a URL query
parameter ``?password=…`` and a key/value ``password=…`` — and psycopg's error messages can
echo part of a connection string. ``redact`` masks one connection string (parsed with
psycopg's conninfo helpers when it is not a URL); ``mask_secrets`` masks any text (an
error message, a log line) that may contain them, including the passwords of the URLs n2w
was configured with wherever they appear.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"
SECRET_KEYS = frozenset({"password", "sslpassword", "sslkey_password", "passfile_password"})
URL_ENV = ("N2W_DATABASE_URL", "N2W_SOURCE_URL", "N2W_SOURCE_PRIMARY_URL", "N2W_DAGSTER_PG_URL",
           "N2W_CELERY_BROKER", "N2W_CELERY_BACKEND", "N2W_CLICKHOUSE_URL", "N2W_TEST_DATABASE_URL")
"""Environment variables that may hold a URL with a password (``mask_secrets`` masks those)."""

_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:)[^\s/?#]+@")
_KEYS = "|".join(sorted(SECRET_KEYS))
_KEY_VALUE = re.compile(
    rf"(?P<key>\b(?:{_KEYS}))(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE)


def is_url(dsn: str) -> bool:
    return "://" in dsn.split("?", 1)[0]


def _redact_url(dsn: str) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and userinfo.partition(":")[2]:  # an empty password (`user:@`) has nothing to hide
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_KEYS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs],
                              safe="*/:", quote_via=quote)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact(dsn: str | None) -> str:
    """``dsn`` (a URL of any scheme, or a libpq key/value string) with every password
    masked; a key/value string psycopg cannot parse is not shown at all."""
    if not dsn:
        return ""
    if is_url(dsn):
        return _redact_url(dsn)
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - psycopg's message may quote the secret: say nothing of it
        return "<connection string that cannot be parsed>"
    # pair by pair, in the order written (make_conninfo quotes each value as libpq needs)
    return " ".join(make_conninfo("", **{k: MASK if k in SECRET_KEYS else v}) for k, v in params.items())


def passwords(dsns: Iterable[str | None]) -> set[str]:
    """The passwords in ``dsns`` (every form), as written and URL-decoded."""
    out: set[str] = set()
    for dsn in dsns:
        if not dsn:
            continue
        try:
            if is_url(dsn):
                parts = urlsplit(dsn)
                found = [parts.password or ""]
                query = parse_qsl(parts.query, keep_blank_values=True)
                found += [v for k, v in query if k.lower() in SECRET_KEYS]
            else:
                found = [v for k, v in conninfo_to_dict(dsn).items() if k in SECRET_KEYS]
        except Exception:  # noqa: BLE001 - unparsable: the regexes below still apply
            continue
        for p in found:
            if p and len(str(p)) >= 3:  # masking a one-letter password would mangle the text
                out |= {str(p), unquote(str(p)), quote(str(p), safe="")}
    return out


def mask_secrets(text: str, dsns: Iterable[str | None] = ()) -> str:
    """``text`` with passwords masked: URL user-info, ``password=`` pairs, and the passwords of
    ``dsns`` and of the URL environment variables (``URL_ENV``) wherever they appear."""
    known = passwords([*dsns, *(os.environ.get(name) for name in URL_ENV)])
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['eq']}{MASK}", text)


def sqlalchemy_url(dsn: str, scheme: str = "postgresql+psycopg2") -> str:
    """``dsn`` (URL or key/value) as a SQLAlchemy URL with ``scheme`` (dagster-postgres)."""
    if is_url(dsn):
        return urlunsplit(urlsplit(dsn)._replace(scheme=scheme))
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password is not None else (f"{user}@" if user else "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    if host.startswith("/"):  # a unix-socket folder goes into the query, as libpq reads it there
        params["host"] = host
        host = ""
    netloc = f"{auth}{host}{':' + port if port and host else ''}"
    if port and not host:
        params["port"] = port
    return urlunsplit((scheme, netloc, "/" + quote(params.pop("dbname", ""), safe=""),
                       urlencode(params, quote_via=quote, safe="/"), ""))


class MaskSecretsFilter(logging.Filter):
    """A logging filter that masks passwords in every record's message (``mask_secrets``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = mask_secrets(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True
