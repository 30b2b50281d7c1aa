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

The DB-API connections are its own (issue 29): taken from the engine's pool once and detached
from it, kept in a short idle list and given back to it after each transaction. The pool's
checkout and return (its reset-on-return rollback, the events, the fairy) cost more than the
INSERT itself on SQLite. Each call is still one transaction, committed before it returns; a
connection whose server went away is closed, not kept; one that failed otherwise is rolled back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

#: Dialects whose DB-API drivers the tests run the raw path on.
RAW_DIALECTS = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})
#: Idle connections kept (a job inserts from its pump's thread; several jobs at once need several).
KEEP_IDLE = 4


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
        #: Idle DB-API connections of this statement's own (detached from the engine's pool):
        #: one per thread inserting at once, at most :data:`KEEP_IDLE` kept.
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        #: An in-memory SQLite database lives in its connection (``sqlite://``: SQLAlchemy keeps
        #: one per thread): a connection of our own would be another, empty database. There the
        #: pool's connection is borrowed for each call, as before.
        database = getattr(getattr(engine, "url", None), "database", None)  # (a mock engine has no URL)
        self._own = not (engine.dialect.name == "sqlite" and database in (None, "", ":memory:"))

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (each with every column) and commit."""
        if not self.raw:
            with self.engine.begin() as core:
                core.execute(insert(self.table), list(rows))
            return
        order = self.order
        params = [tuple(r[k] for k in order) for r in rows] if order is not None else list(rows)
        dialect = self.engine.dialect
        conn = self._take()
        keep = True
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
            # connection is closed, not kept
            lost = dialect.is_disconnect(exc, conn, None)
            keep = not lost and _rolled_back(conn)
            raise DBAPIError.instance(
                self.sql,
                params,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=lost,
                dialect=dialect,
            ) from exc
        except BaseException:
            keep = _rolled_back(conn)
            raise
        finally:
            self._give(conn, keep)

    def _take(self) -> Any:
        """An idle connection of ours, or a new one: made by the engine's pool (its ``connect``
        events run: SQLite's WAL pragmas) and detached from it."""
        if not self._own:
            return self.engine.raw_connection()  # the pool's: back to it in _give
        with self._lock:
            if self._idle:
                return self._idle.pop()
        fairy = self.engine.raw_connection()
        fairy.detach()
        return fairy.dbapi_connection

    def _give(self, conn: Any, keep: bool) -> None:
        if not self._own:
            if not keep:  # a lost or broken connection: not back into the pool
                conn.invalidate()
            conn.close()
            return
        with self._lock:
            if keep and len(self._idle) < KEEP_IDLE:
                self._idle.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close the idle connections (the engine's ``dispose`` does not know them)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def _rolled_back(conn: Any) -> bool:
    """Roll ``conn`` back after a failed statement; False when even that failed (close it)."""
    try:
        conn.rollback()
    except Exception:
        return False
    return True
