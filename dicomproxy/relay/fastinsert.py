"""One INSERT compiled once and run on the DB-API connection: the journal's per-instance row.

Every instance a job sends is journalled in its own transaction before its spool file goes
(:mod:`dicomproxy.relay.recorder`; a kill resends at most the one instance in flight). Through
SQLAlchemy's Core that cost ~0.09 ms per row on SQLite and ~0.7 ms on PostgreSQL, most of it
statement and execution-context machinery, not the database (issue 29's profile: 12 % of the
relay's GIL samples). :class:`FastInsert` compiles the statement once with the engine's own dialect
(its parameter style, no RETURNING) and executes it on a pooled DB-API connection: 0.03 ms and
0.4 ms. It is used only for dialects whose drivers take the column values as they are (no bind
processors for these column types: SQLite, PostgreSQL, MySQL/MariaDB — the ones the tests run);
any other dialect goes through SQLAlchemy as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

#: Dialects whose DB-API drivers the tests run the raw path on.
RAW_DIALECTS = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})


class FastInsert:
    """``INSERT INTO table (columns) VALUES (...)`` for ``engine``, one transaction per call."""

    def __init__(self, engine: Engine, table: Table, columns: Sequence[str]) -> None:
        self.engine = engine
        self.table = table
        self.columns = tuple(columns)
        self.raw = engine.dialect.name in RAW_DIALECTS
        compiled = insert(table).compile(
            dialect=engine.dialect, column_keys=list(columns), for_executemany=True
        )
        self.sql = str(compiled)
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (each with every column) and commit."""
        if not self.raw:
            with self.engine.begin() as core:
                core.execute(insert(self.table), list(rows))
            return
        order = self.order
        params = [tuple(r[k] for k in order) for r in rows] if order is not None else list(rows)
        dialect = self.engine.dialect
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                if len(params) == 1:
                    cursor.execute(self.sql, params[0])
                else:
                    cursor.executemany(self.sql, params)
            finally:
                cursor.close()
            conn.commit()
        except dialect.loaded_dbapi.Error as exc:
            # as SQLAlchemy would raise it (callers catch SQLAlchemyError); a lost server's
            # connection is not given back to the pool
            lost = dialect.is_disconnect(exc, conn.dbapi_connection, None)
            if lost:
                conn.invalidate(exc)
            else:
                conn.rollback()
            raise DBAPIError.instance(
                self.sql,
                params,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=lost,
                dialect=dialect,
            ) from exc
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()  # back to the pool
