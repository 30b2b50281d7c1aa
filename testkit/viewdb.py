"""Build an exam view for tests and the demo: a real table with the seed's columns, created
*without* quoted identifiers (as hospitals do), filled with rows.

RowTimestamp comes in the two kinds hospitals have (../shared/exam-view.md):

- ``"datetime"``: a date-time column the writer fills (Oracle TIMESTAMP/DATE, a SQL Server datetime);
- ``"rowversion"``: SQL Server's ``timestamp``/rowversion emulated on a real server — an
  8-byte big-endian binary column the server fills on every insert and update, and a
  ``min_active_rowversion()`` function with SQL Server's meaning (every stamp below it is
  committed):

  * PostgreSQL: ``bytea``; a trigger stores the writing transaction's id
    (``int8send(pg_current_xact_id())``); ``min_active_rowversion()`` is the oldest
    transaction still running (``pg_snapshot_xmin``). Exact, like SQL Server: ids are
    assigned at write time and committed in any order.
  * MariaDB: ``binary(8)`` from a sequence; the trigger first records, in a MEMORY table
    (non-transactional, so other sessions see it at once), the lowest stamp the writing
    connection may still commit; writers opened with :func:`writer` clear it after their
    commit. A write that bypasses :func:`writer` leaves its marker, which only holds the
    guard low (rows are read later, never lost).
  * SQLite: ``BLOB`` from a counter table, filled by an AFTER trigger. SQLite has one
    writer at a time, so stamps follow commit order and there is no guard to emulate.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    Table,
    delete,
    event,
    insert,
    inspect,
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ProgrammingError

from dicomproxy.view.model import COLUMNS, exam_view_table, split_view_name

#: "number": an integer counter the test writes itself (no trigger, no guard function).
StampKindName = Literal["datetime", "rowversion", "number"]

#: Shared by every rowversion table of one database (like SQL Server's database-wide counter).
_MARIADB_SEQ = "dicomproxy_rv_seq"
_MARIADB_INFLIGHT = "dicomproxy_rv_inflight"
_SQLITE_COUNTER = "dicomproxy_rv_counter"
_SQLITE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _creation_table(name: str, stamp: StampKindName) -> Table:
    """The model with a concrete, creatable type for RowTimestamp."""
    model = exam_view_table(name, MetaData())
    binary = LargeBinary(8).with_variant(mysql.BINARY(8), "mysql", "mariadb")
    stamp_type = DateTime() if stamp == "datetime" else BigInteger() if stamp == "number" else binary
    columns = []
    for col, _typ, _ in COLUMNS:
        source = model.c[col]
        columns.append(Column(source.name, stamp_type if col == "RowTimestamp" else source.type, key=col))
    return Table(model.name, MetaData(), *columns, schema=model.schema)


def create_view_table(engine: Engine, name: str = "V_IMAGE_CLOUD", stamp: StampKindName = "datetime") -> None:
    """(Re)create the view as a plain table (tests need to write it; production only reads)."""
    table = _creation_table(name, stamp)
    drop_view_table(engine, name)
    table.create(engine)
    if stamp == "rowversion":
        _install_rowversion(engine, split_view_name(name)[1].lower())


def drop_view_table(engine: Engine, name: str = "V_IMAGE_CLOUD") -> None:
    """Drop the table (and with it its triggers)."""
    exam_view_table(name, MetaData()).drop(engine, checkfirst=True)


def _install_rowversion(engine: Engine, table: str) -> None:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.begin() as conn:
            # CREATE OR REPLACE FUNCTION is not safe against a concurrent twin: serialise.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('dicomproxy_rowversion'))"))
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION dicomproxy_rowversion() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN NEW.rowtimestamp := int8send(pg_current_xact_id()::text::bigint); "
                    "RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION min_active_rowversion() RETURNS bytea LANGUAGE sql STABLE AS "
                    "$$ SELECT int8send(pg_snapshot_xmin(pg_current_snapshot())::text::bigint) $$"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER {table}_rowversion BEFORE INSERT OR UPDATE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION dicomproxy_rowversion()"
                )
            )
    elif dialect in ("mysql", "mariadb"):
        as_binary = "UNHEX(LPAD(HEX({}), 16, '0'))"
        next_free = f"(SELECT {as_binary.format('next_not_cached_value')} FROM {_MARIADB_SEQ})"
        body = (
            f"BEGIN INSERT INTO {_MARIADB_INFLIGHT} (conn, v) SELECT CONNECTION_ID(), "
            f"{as_binary.format('next_not_cached_value')} FROM {_MARIADB_SEQ} "
            "ON DUPLICATE KEY UPDATE v = LEAST(v, VALUES(v)); "
            f"SET NEW.rowtimestamp = {as_binary.format(f'NEXT VALUE FOR {_MARIADB_SEQ}')}; END"
        )
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {_MARIADB_SEQ} NOCACHE"))
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {_MARIADB_INFLIGHT} "
                    "(conn BIGINT UNSIGNED PRIMARY KEY, v BINARY(8) NOT NULL) ENGINE=MEMORY"
                )
            )
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION min_active_rowversion() RETURNS BINARY(8) READS SQL DATA "
                    f"RETURN COALESCE((SELECT MIN(v) FROM {_MARIADB_INFLIGHT} WHERE conn IN "
                    "(SELECT id FROM information_schema.processlist)), "
                    f"{next_free})"
                )
            )
            for when in ("INSERT", "UPDATE"):
                conn.execute(
                    text(
                        f"CREATE TRIGGER {table}_rv_{when[0].lower()} BEFORE {when} ON {table} "
                        f"FOR EACH ROW {body}"
                    )
                )
    elif dialect == "sqlite":
        _register_sqlite_functions(engine)
        set_stamp = (
            f"UPDATE {_SQLITE_COUNTER} SET n = n + 1; UPDATE {table} SET rowtimestamp = "
            f"int8send((SELECT n FROM {_SQLITE_COUNTER})) WHERE rowid = NEW.rowid;"
        )
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE IF NOT EXISTS {_SQLITE_COUNTER} (n INTEGER NOT NULL)"))
            conn.execute(
                text(
                    f"INSERT INTO {_SQLITE_COUNTER} (n) SELECT 0 "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {_SQLITE_COUNTER})"
                )
            )
            for when in ("INSERT", "UPDATE"):
                conn.execute(
                    text(
                        f"CREATE TRIGGER {table}_rv_{when[0].lower()} AFTER {when} ON {table} "
                        f"BEGIN {set_stamp} END"
                    )
                )
    else:
        raise ValueError(f"no rowversion emulation for {dialect}")


def _register_sqlite_functions(engine: Engine) -> None:
    """``int8send(n)`` (as PostgreSQL names it) on every connection of this writing engine."""
    if engine in _SQLITE_ENGINES:
        return

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function(
            "int8send", 1, lambda n: int(n).to_bytes(8, "big"), deterministic=True
        )

    event.listen(engine, "connect", on_connect)
    _SQLITE_ENGINES.add(engine)
    engine.dispose()  # pooled connections opened before the listener lack the function


def is_rowversion(engine: Engine, name: str = "V_IMAGE_CLOUD") -> bool:
    """True when the table's RowTimestamp is binary (filled by the server)."""
    schema, table = split_view_name(name)
    for column in inspect(engine).get_columns(table.lower(), schema=schema.lower() if schema else None):
        if str(column["name"]).lower() == "rowtimestamp":
            return any(word in str(column["type"]).upper() for word in ("BINARY", "BLOB", "BYTEA"))
    return False


@contextmanager
def writer(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed on exit (rolled back on an error); on MariaDB the
    rowversion marker of this connection is cleared *after* the transaction ended (the
    emulated "transaction finished"). Markers of connections that no longer exist are
    ignored by ``min_active_rowversion()``."""
    with engine.connect() as conn:
        try:
            with conn.begin():
                yield conn
        finally:
            if engine.dialect.name in ("mysql", "mariadb"):
                try:
                    conn.execute(text(f"DELETE FROM {_MARIADB_INFLIGHT} WHERE conn = CONNECTION_ID()"))
                    conn.commit()
                except ProgrammingError:  # no rowversion table in this database
                    conn.rollback()


def _rows_for(engine: Engine, name: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    batch = [dict(r) for r in rows]
    if batch and is_rowversion(engine, name):
        for row in batch:  # the server fills it
            row.pop("RowTimestamp", None)
    return batch


def _writable(name: str) -> Table:
    """The model with a RowTimestamp type that binds what tests give (a date-time)."""
    return _creation_table(name, "datetime")


def insert_rows(
    engine: Engine,
    rows: Iterable[Mapping[str, Any]],
    name: str = "V_IMAGE_CLOUD",
    conn: Connection | None = None,
) -> None:
    """Insert rows (a rowversion table's RowTimestamp is left to the server)."""
    batch = _rows_for(engine, name, rows)
    if not batch:
        return
    stmt = insert(_writable(name))
    if conn is not None:
        conn.execute(stmt, batch)
        return
    with writer(engine) as own:
        own.execute(stmt, batch)


def update_rows(
    engine: Engine, name: str, examine_id: str, values: Mapping[str, Any], conn: Connection | None = None
) -> None:
    """``UPDATE … SET values WHERE ExamineID = examine_id`` (a rowversion stamp bumps itself)."""
    table = _writable(name)
    changes = _rows_for(engine, name, [values])[0]
    stmt = update(table).where(table.c.ExamineID == examine_id).values(**changes)
    if conn is not None:
        conn.execute(stmt)
        return
    with writer(engine) as own:
        own.execute(stmt)


def delete_rows(engine: Engine, name: str, examine_id: str) -> None:
    """``DELETE … WHERE ExamineID = examine_id`` (what no RowTimestamp announces)."""
    table = _writable(name)
    with writer(engine) as own:
        own.execute(delete(table).where(table.c.ExamineID == examine_id))
