"""A stand-in for the pyodbc module, for unit tests only: no SQL Server can run here, but
SQLAlchemy's mssql+pyodbc dialect can execute against this and we can see exactly what the
driver would be given — the SQL text, the parameters, and the ``cursor.setinputsizes()``
types (SQL_VARCHAR vs SQL_WVARCHAR) that decide whether SQL Server converts a column.

Constants carry their ODBC values (sql.h / sqlext.h / sqlncli.h). Queries SQLAlchemy makes
while initialising are answered with plausible values; every other query returns ``rows_for``
(empty by default)."""

from __future__ import annotations

import datetime
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SQL_CONSTANTS = {
    "SQL_CHAR": 1,
    "SQL_NUMERIC": 2,
    "SQL_DECIMAL": 3,
    "SQL_INTEGER": 4,
    "SQL_SMALLINT": 5,
    "SQL_FLOAT": 6,
    "SQL_REAL": 7,
    "SQL_DOUBLE": 8,
    "SQL_VARCHAR": 12,
    "SQL_TYPE_DATE": 91,
    "SQL_TYPE_TIME": 92,
    "SQL_TYPE_TIMESTAMP": 93,
    "SQL_LONGVARCHAR": -1,
    "SQL_BINARY": -2,
    "SQL_VARBINARY": -3,
    "SQL_LONGVARBINARY": -4,
    "SQL_BIGINT": -5,
    "SQL_TINYINT": -6,
    "SQL_BIT": -7,
    "SQL_WCHAR": -8,
    "SQL_WVARCHAR": -9,
    "SQL_WLONGVARCHAR": -10,
    "SQL_GUID": -11,
    "SQL_SS_XML": -152,
    "SQL_SS_TIMESTAMPOFFSET": -155,
    "SQL_DRIVER_NAME": 6,
    "SQL_DBMS_VER": 18,
    "SQL_ODBC_VER": 10,
}


@dataclass
class Recorder:
    """What the driver was asked to do, statement by statement."""

    statements: list[tuple[str, tuple[Any, ...], list[Any] | None]] = field(default_factory=list)
    rows_for: Callable[[str], list[tuple[Any, ...]]] = lambda sql: []
    _pending_sizes: list[Any] | None = None


class _Cursor:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.rows: list[tuple[Any, ...]] = []
        self.description: list[tuple[Any, ...]] | None = None
        self.rowcount = -1

    def setinputsizes(self, sizes: list[Any]) -> None:
        self.rec._pending_sizes = list(sizes)

    def execute(self, sql: str, *params: Any) -> _Cursor:
        flat = tuple(params[0]) if len(params) == 1 and isinstance(params[0], (list, tuple)) else params
        low = sql.lower()
        if "productversion" in low:
            self.rows = [("16.0.4003.1",)]
        elif "schema_name()" in low:
            self.rows = [("dbo",)]
        elif "sys.dm_exec_sessions" in low or "transaction_isolation_level" in low:
            self.rows = [(2,)]
        else:
            self.rec.statements.append((sql, flat, self.rec._pending_sizes))
            self.rows = list(self.rec.rows_for(sql))
        self.rec._pending_sizes = None
        width = len(self.rows[0]) if self.rows else 1
        self.description = [(f"c{i}", None, None, None, None, None, None) for i in range(width)]
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows.pop(0) if self.rows else None

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        out, self.rows = self.rows[:size], self.rows[size:]
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out, self.rows = self.rows, []
        return out

    def nextset(self) -> None:
        return None

    def close(self) -> None:
        pass


class _Connection:
    autocommit = False

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def cursor(self) -> _Cursor:
        return _Cursor(self.rec)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def getinfo(self, _key: int) -> str:
        return "17.10"

    def add_output_converter(self, *_args: Any) -> None:
        pass

    def setdecoding(self, *_args: Any, **_kw: Any) -> None:
        pass

    def setencoding(self, *_args: Any, **_kw: Any) -> None:
        pass


class _Error(Exception):
    pass


def fake_pyodbc(rec: Recorder) -> types.ModuleType:
    """A module object that SQLAlchemy accepts as ``module=`` for mssql+pyodbc."""
    mod = types.ModuleType("pyodbc")
    for name, value in SQL_CONSTANTS.items():
        setattr(mod, name, value)
    # DB-API type objects, as pyodbc defines them
    mod.STRING, mod.NUMBER, mod.DATETIME, mod.BINARY, mod.ROWID = (  # type: ignore[attr-defined]
        str,
        float,
        datetime.datetime,
        bytearray,
        int,
    )
    mod.version = "5.2.0"  # type: ignore[attr-defined]
    mod.paramstyle = "qmark"  # type: ignore[attr-defined]
    mod.pooling = True  # type: ignore[attr-defined]
    mod.Cursor = _Cursor  # type: ignore[attr-defined]
    for name in (
        "Error",
        "Warning",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        setattr(mod, name, _Error)
    mod.connect = lambda *a, **k: _Connection(rec)  # type: ignore[attr-defined]
    return mod


def connection_factory(rec: Recorder) -> Callable[[], _Connection]:
    return lambda: _Connection(rec)
