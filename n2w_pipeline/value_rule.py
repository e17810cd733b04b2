"""The value rule in SQL: which narrow column gives a row's cell, and why a row gives none.

``value_format`` picks the column: Decimal → double_v, Integer → long_v, Boolean →
1.0/0.0, String → the number it spells (surrounding whitespace ignored; it must look like
a decimal number, ``NUMBER_RE``, and fit a float8). A row gives no
cell when its value is NULL, its format is unknown, its string is not a number, or its
value is NaN/±Infinity (or a number string out of float8's range).

The extraction evaluates the rule in the server, so rows reach the client as fixed-width
fields (no strings to transfer or parse): ``raw_value`` (may be NULL, NaN or ±Infinity) and
``status``, which names the reasons the client cannot see in the value alone. The checks
use ``cell_value`` (NULL where no cell) on the few rows they look at.

``pg_input_is_valid`` (PostgreSQL 16) tests a string without raising; on older servers
``install`` creates a session-local PL/pgSQL stand-in, called only for String rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from n2w_pipeline.config import SourceColumns

NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
NON_FINITE_RE = r"^[+-]?(nan|inf|infinity)$"

# status codes (two bits): why a row of a listed channel gives no cell, beyond its value
OK, UNKNOWN_FORMAT, UNPARSABLE, NON_FINITE = 0, 1, 2, 3
STATUS_REASONS = {UNKNOWN_FORMAT: "unknown_format", UNPARSABLE: "unparsable", NON_FINITE: "non_finite"}

_FALLBACK = """CREATE OR REPLACE FUNCTION pg_temp.n2w_is_float8(t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
  PERFORM t::float8;
  RETURN true;
EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
  RETURN false;
END $$"""


def install(execute: Callable[[str], Any], server_version: int) -> bool:
    """Prepare a session for the rule; returns whether ``pg_input_is_valid`` exists.

    ``execute`` runs one statement on the session (psycopg or ADBC);
    ``server_version`` is ``server_version_num`` (e.g. 180001)."""
    native = server_version >= 160000
    if not native:
        try:
            execute(_FALLBACK)
        except Exception as exc:  # noqa: BLE001 - re-raised with what to do
            raise RuntimeError(
                "the value rule needs pg_input_is_valid (PostgreSQL 16+) or a session function "
                f"pg_temp.n2w_is_float8, which this server refused ({str(exc).splitlines()[0]}); "
                "a read-only source (a replica, N2W_SOURCE_URL) must run PostgreSQL 16 or later"
            ) from exc
    return native


class ValueRule:
    """SQL expressions of the rule for one narrow table alias."""

    def __init__(self, columns: SourceColumns, alias: str, native: bool = True) -> None:
        def col(name: str) -> sql.Composable:
            return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(name))

        self.vf, self.dv, self.lv = col(columns.value_format), col(columns.double_v), col(columns.long_v)
        self.bv, self.sv = col(columns.bool_v), col(columns.str_v)
        self.text = sql.SQL("btrim({}, E' \\t\\n\\r\\f\\v')").format(self.sv)
        self.valid = (
            sql.SQL("pg_input_is_valid({}, 'float8')") if native else sql.SQL("pg_temp.n2w_is_float8({})")
        ).format(self.sv)

    def _number(self) -> sql.Composable:
        """A non-NULL string the rule reads as a number (or NaN/±Infinity, which the value
        then tells). PostgreSQL's float8 input already skips the same whitespace and takes
        exactly the regex's forms plus NaN/Infinity spellings and hexadecimal (``0x1p3``),
        which the rule refuses: so no regex (costly) for the strings that parse."""
        return sql.SQL("{valid} AND strpos({sv}, 'x') = 0 AND strpos({sv}, 'X') = 0").format(
            valid=self.valid, sv=self.sv
        )

    def raw_value(self) -> sql.Composable:
        """The float8 a row spells: NULL for a NULL value, an unknown format or a string
        that is no number; NaN/±Infinity as stored."""
        return sql.SQL(
            """CASE {vf} WHEN 'Decimal' THEN {dv} WHEN 'Integer' THEN {lv}::float8
  WHEN 'Boolean' THEN {bv}::int::float8
  WHEN 'String' THEN CASE WHEN {number} THEN {sv}::float8 END END"""
        ).format(vf=self.vf, dv=self.dv, lv=self.lv, bv=self.bv, number=self._number(), sv=self.sv)

    def status(self) -> sql.Composable:
        """``OK`` unless the format is unknown, or a non-NULL string is not a number
        (``UNPARSABLE``) or spells NaN/Infinity or a number out of range (``NON_FINITE``).
        A NULL or non-finite ``raw_value`` under ``OK`` is told by the value itself."""
        return sql.SQL(
            """CASE {vf} WHEN 'Decimal' THEN 0 WHEN 'Integer' THEN 0 WHEN 'Boolean' THEN 0
  WHEN 'String' THEN CASE WHEN {sv} IS NULL OR {number} THEN 0
    WHEN {text} ~ {number_re} OR {text} ~* {non_finite_re} THEN {non_finite} ELSE {unparsable} END
  ELSE {unknown} END"""
        ).format(vf=self.vf, sv=self.sv, number=self._number(), text=self.text,
                 number_re=sql.Literal(NUMBER_RE), non_finite_re=sql.Literal(NON_FINITE_RE),
                 non_finite=sql.Literal(NON_FINITE), unparsable=sql.Literal(UNPARSABLE),
                 unknown=sql.Literal(UNKNOWN_FORMAT))

    def cell_value(self) -> sql.Composable:
        """The cell a row gives, NULL when it gives none."""
        return sql.SQL(
            """(SELECT CASE WHEN x IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
  THEN NULL ELSE x END FROM (SELECT {raw} AS x) v)"""
        ).format(raw=self.raw_value())
