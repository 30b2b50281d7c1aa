"""RowTimestamp: the view's change stamp, of whatever kind the hospital's database gives.

The seed types the column ``timestamp``. On SQL Server that is **rowversion**: 8 binary bytes,
database-wide, bumped on every insert/update — a change counter, not a clock. On Oracle
``TIMESTAMP``/``DATE`` it is a date-time; another site may use an integer. So the stamp is
treated as an *opaque, ordered* value (../shared/exam-view.md, "RowTimestamp is not a time"):

- its kind is detected once from the driver's values (:func:`kind_of`);
- a high-water mark is kept in a text form that survives restart (:class:`Mark`);
- an incremental read never does arithmetic on an opaque stamp. Late commits are handled
  per kind (:class:`StampPolicy`):

  * **rowversion**: a value is assigned at write time, so a transaction committing later can
    carry a lower value than rows already read. SQL Server's ``MIN_ACTIVE_ROWVERSION()`` is the
    bound below which every value is committed. Each pass reads the guard *first*, then every
    row ``RowTimestamp > mark``; the mark advances only to the highest stamp below the guard.
    Rows above it are taken too (an exam committed while another transaction is still open is
    found at once) and read again on the next pass, so nothing committed late is ever skipped.
    Other servers offer the same guard when the database defines a function
    ``min_active_rowversion()`` (the test servers' emulation does); SQLite has one writer, so
    its stamps are assigned in commit order and need none.
  * **integer counter**: read like a rowversion (``RowTimestamp > mark``) but with **no**
    late-commit guard: ``MIN_ACTIVE_ROWVERSION()`` bounds rowversions, not a number the view's
    writer assigns itself, and no database bounds such a number in general. A counter assigned
    before commit (a sequence, a trigger) can then carry a lower value than rows already read,
    and that row is missed until the UID side table is rebuilt; one WARNING says so when the
    kind is detected (:func:`guard_for`; not on SQLite, whose one writer commits in order). A
    counter assigned at commit (Oracle ``ORA_ROWSCN``) is not affected.
  * **date-time**: re-read an overlap window below the mark (``RowTimestamp >= mark − overlap``).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, select, types
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.functions import Function

LOG = logging.getLogger("dicomproxy.view.stamp")

#: SQL Server's built-in guard, and the name other servers may define for the same meaning.
GUARD_FUNCTION = "min_active_rowversion"


class StampKind(enum.Enum):
    """What the driver returns for RowTimestamp."""

    ROWVERSION = "rowversion"  # bytes (SQL Server timestamp/rowversion, binary(8), bytea, BLOB)
    DATETIME = "datetime"  # datetime.datetime / date
    NUMBER = "number"  # an integer counter (e.g. Oracle ORA_ROWSCN)
    TEXT = "text"  # anything else that orders (a string that is no date-time)
    EMPTY = "empty"  # no row has a stamp yet

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    StampKind.ROWVERSION: "binary change counter (SQL Server rowversion/timestamp)",
    StampKind.DATETIME: "date-time",
    StampKind.NUMBER: "integer counter",
    StampKind.TEXT: "text, ordered as text",
    StampKind.EMPTY: "no row has a RowTimestamp yet",
}


def _parse_datetime(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None


class RowStamp(types.TypeDecorator[Any]):
    """Column type of RowTimestamp on the read side: passes the driver's value through,
    normalised — ``memoryview``/``bytearray`` → ``bytes`` (psycopg2 bytea), integral
    ``Decimal`` → ``int`` (Oracle NUMBER), and on SQLite (untyped) a text that parses as a
    date-time → ``datetime`` (as SQLAlchemy's DateTime stores them). Binds ``datetime`` on
    SQLite in SQLAlchemy's storage format so comparisons stay textual-chronological.
    No DDL: the proxy never creates the view."""

    impl = types.NullType
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, dt.datetime) and dialect.name == "sqlite":
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, (memoryview, bytearray)):
            return bytes(value)
        if isinstance(value, Decimal) and value == value.to_integral_value():
            return int(value)
        if isinstance(value, str) and dialect.name == "sqlite":
            parsed = _parse_datetime(value)
            return parsed if parsed is not None else value
        return value


def kind_of(value: Any) -> StampKind:
    """The kind of one (normalised) RowTimestamp value."""
    if value is None:
        return StampKind.EMPTY
    if isinstance(value, (bytes, bytearray, memoryview)):
        return StampKind.ROWVERSION
    if isinstance(value, (dt.datetime, dt.date)):
        return StampKind.DATETIME
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return StampKind.NUMBER
    return StampKind.TEXT


@dataclass(frozen=True)
class Mark:
    """The highest RowTimestamp read so far, as the driver gave it."""

    kind: StampKind
    value: Any

    def encode(self) -> str:
        """Text that survives restart: ``rowversion:00000000000007d1``, ``datetime:2024-…``."""
        if self.kind is StampKind.ROWVERSION:
            return f"rowversion:{bytes(self.value).hex()}"
        if self.kind is StampKind.DATETIME:
            value = self.value
            if not isinstance(value, dt.datetime):
                value = dt.datetime(value.year, value.month, value.day)
            return f"datetime:{value.isoformat()}"
        return f"{self.kind.value}:{self.value}"

    @classmethod
    def decode(cls, text: str) -> Mark | None:
        """The inverse of :meth:`encode`; None for anything unreadable (→ full rebuild)."""
        name, sep, rest = text.partition(":")
        if not sep:
            return None
        try:
            kind = StampKind(name)
            if kind is StampKind.ROWVERSION:
                return cls(kind, bytes.fromhex(rest))
            if kind is StampKind.DATETIME:
                return cls(kind, dt.datetime.fromisoformat(rest))
            if kind is StampKind.NUMBER:
                return cls(kind, int(rest))
            if kind is StampKind.TEXT:
                return cls(kind, rest)
        except ValueError:
            return None
        return None


def later(a: Any, b: Any) -> Any:
    """The larger of two stamps of one kind (None is below everything)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b > a else a


@dataclass(frozen=True)
class StampPolicy:
    """How to read the view incrementally for one stamp kind (see the module docstring)."""

    kind: StampKind
    #: ``MIN_ACTIVE_ROWVERSION()`` or the database's ``min_active_rowversion()``; None = no guard.
    guard: Function[Any] | None = None
    overlap: dt.timedelta = dt.timedelta(seconds=60)

    def since(self, column: Any, mark: Mark) -> ColumnElement[bool]:
        """WHERE clause of an incremental read after ``mark``."""
        if self.kind is StampKind.DATETIME:
            return column >= mark.value - self.overlap
        return column > mark.value

    def guard_value(self, conn: Connection) -> Any:
        """The guard's value now (read *before* the rows), or None without a guard."""
        if self.guard is None:
            return None
        return conn.execute(select(self.guard)).scalar()

    def settled(self, value: Any, guard: Any) -> bool:
        """May the mark advance to ``value``? Only below the guard read before the rows
        (every such stamp was committed then, and no later write can go below it)."""
        if value is None or kind_of(value) is not self.kind:
            return False
        return guard is None or value < guard

    def describe(self) -> str:
        text = f"RowTimestamp: {self.kind.description}"
        if self.kind is StampKind.DATETIME:
            return f"{text}; re-reads {int(self.overlap.total_seconds())} s below the high-water mark"
        if self.guard is not None:
            return f"{text}; reads below {self.guard.name.upper()}() (late commits never skipped)"
        if self.kind in (StampKind.ROWVERSION, StampKind.NUMBER):
            return f"{text}; no late-commit guard"
        return text


def detect_kind(conn: Connection, column: Any) -> StampKind:
    """The kind of the first non-NULL RowTimestamp (one row, no ordering: cheap)."""
    stmt = select(column).where(column.is_not(None)).limit(1)
    return kind_of(conn.execute(stmt).scalar())


def guard_for(engine: Engine, kind: StampKind) -> Function[Any] | None:
    """The late-commit guard for this database and kind, if it has one.

    rowversion — SQL Server: ``MIN_ACTIVE_ROWVERSION()`` (built in). SQLite: none needed (one
    writer, so stamps follow commit order). Others: ``min_active_rowversion()`` if the database
    defines it (probed once); without it a WARNING says a late commit may be missed until the
    next full rebuild of the side table.

    Integer counter: never a guard (module docstring); a WARNING says so, except on SQLite.
    """
    dialect = engine.dialect.name
    if kind is StampKind.NUMBER and dialect != "sqlite":
        LOG.warning(
            "RowTimestamp is an integer counter: %s gives no late-commit guard for it; if the "
            "view's writer assigns it before commit (a sequence, a trigger), a transaction that "
            "commits after a later one may be missed until the UID side table is rebuilt",
            dialect,
        )
    if kind is not StampKind.ROWVERSION:
        return None
    if dialect == "mssql":
        return func.MIN_ACTIVE_ROWVERSION(type_=RowStamp())
    if dialect == "sqlite":
        return None
    probe = getattr(func, GUARD_FUNCTION)(type_=RowStamp())
    try:
        with engine.connect() as conn:
            conn.execute(select(probe)).scalar()
    except SQLAlchemyError:
        LOG.warning(
            "RowTimestamp is a binary counter but %s has no %s(): a transaction that commits "
            "after a later one may be missed until the UID side table is rebuilt",
            dialect,
            GUARD_FUNCTION,
        )
        return None
    return getattr(func, GUARD_FUNCTION)(type_=RowStamp())


def policy_for(engine: Engine, column: Any, overlap: dt.timedelta) -> StampPolicy:
    """Detect the kind from the view's values and pick the guard."""
    with engine.connect() as conn:
        kind = detect_kind(conn, column)
    return StampPolicy(kind, guard_for(engine, kind), overlap)
