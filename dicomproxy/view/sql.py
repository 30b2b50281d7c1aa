"""SQL building blocks that stay portable and index-friendly on every supported database.

- Values are always bound parameters; nothing from a request is rendered into SQL text.
- LIKE patterns escape the database's own wildcards (``%``, ``_``, the escape character
  ``\\``, and ``[`` on SQL Server, whose LIKE treats ``[...]`` as a character class) and
  always carry ``ESCAPE '\\'``.
- IN lists are split into statements of at most :data:`MAX_IN_ITEMS` items: Oracle
  allows 1000 expressions in one IN list (ORA-01795), SQL Server 2100 parameters per
  statement; one list of ≤1000 plus a handful of other parameters fits both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import BindParameter, ColumnElement, literal
from sqlalchemy.sql.elements import ColumnClause

T = TypeVar("T")

#: Largest IN list per statement (Oracle ≤ 1000 items; SQL Server ≤ 2100 parameters in total).
MAX_IN_ITEMS = 1000

ESCAPE = "\\"


def batches(values: Sequence[T], size: int = MAX_IN_ITEMS) -> Iterator[list[T]]:
    """``values`` in lists of at most ``size`` (one SQL statement each)."""
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def escape_like(value: str, dialect: str) -> str:
    """Escape the database's LIKE metacharacters in a literal fragment."""
    out = value.replace(ESCAPE, ESCAPE + ESCAPE).replace("%", ESCAPE + "%").replace("_", ESCAPE + "_")
    if dialect == "mssql":
        out = out.replace("[", ESCAPE + "[")
    return out


def dicom_wildcard_to_like(value: str, dialect: str) -> str:
    """PS3.4 C.2.2.2.4 wildcards → a LIKE pattern: ``*`` → ``%``, ``?`` → ``_``, the rest literal."""
    parts = []
    for ch in value:
        if ch == "*":
            parts.append("%")
        elif ch == "?":
            parts.append("_")
        else:
            parts.append(escape_like(ch, dialect))
    return "".join(parts)


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def bound(column: ColumnClause[Any] | Any, value: Any) -> BindParameter[Any]:
    """A bound parameter of the column's own type. A bare ``literal("王%")`` would be typed
    from the value (non-ASCII → Unicode → nvarchar on SQL Server/pyodbc), and comparing a
    varchar column with nvarchar makes SQL Server convert the column: an index scan."""
    return literal(value, type_=column.type)


def string_match(column: ColumnClause[Any] | Any, value: str, dialect: str) -> ColumnElement[bool] | None:
    """Single value or wildcard matching (PS3.4 C.2.2.2.1/4); None for universal matching."""
    if value == "" or set(value) == {"*"}:
        return None
    if has_wildcard(value):
        return column.like(bound(column, dicom_wildcard_to_like(value, dialect)), escape=ESCAPE)
    return column == bound(column, value)
