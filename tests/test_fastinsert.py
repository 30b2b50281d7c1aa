"""The journal's per-instance INSERT on the DB-API (dicomproxy/relay/fastinsert.py) on real
SQLite, PostgreSQL and MariaDB: the rows SQLAlchemy's Core would write, errors as SQLAlchemy's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_mock_engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from dicomproxy.relay.fastinsert import FastInsert
from dicomproxy.relay.journal import INSTANCE_COLUMNS, InstanceRecord, Journal, job_instances
from dicomproxy.status import JobKind


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    if request.param == "sqlite":
        return Journal(f"sqlite:///{tmp_path / 'j.db'}")
    return Journal(
        request.getfixturevalue("pg_journal" if request.param == "postgresql" else "mariadb_journal")
    )


def test_rows_are_those_sqlalchemy_writes(journal: Journal) -> None:
    job = journal.start(next(iter(JobKind)), "CLOUD", "127.0.0.1", "DEST", "pacs")
    records = [
        InstanceRecord("1.2.3.1", "sent", "1.2.840.10008.5.1.4.1.1.2", 0, "1.2.840.10008.1.2.1", 524288),
        InstanceRecord("1.2.3.2", "failed", "1.2.840.10008.5.1.4.1.1.2", 0xA700, "", 0, "out of resources"),
        InstanceRecord("1.2.3.3", "warning", "", None, "1.2.840.10008.1.2.4.80", 7, "坏"),
    ]
    assert journal._instance_insert is None or journal._instance_insert.raw
    journal.add_instances(job, records[:1])  # one row: execute
    journal.add_instances(job, records[1:])  # several: executemany
    writer = journal._instance_insert
    assert writer is not None and writer.raw  # the DB-API path ran, not SQLAlchemy's
    with journal.engine.connect() as conn:
        rows = conn.execute(select(job_instances).order_by(job_instances.c.id)).mappings().all()
    assert [{k: r[k] for k in INSTANCE_COLUMNS} for r in rows] == [
        {"job_id": job, **r.__dict__} for r in records
    ]


def test_errors_are_sqlalchemys_and_leave_the_pool_usable(journal: Journal) -> None:
    record = InstanceRecord("1.2.3.9", "sent")
    if journal.engine.dialect.name == "sqlite":
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")  # per connection: may not be the pooled one
    with pytest.raises(IntegrityError):
        FastInsert(journal.engine, job_instances, INSTANCE_COLUMNS)(
            [{"job_id": 999_999, **record.__dict__, "sop_instance_uid": None}]
        )
    job = journal.start(next(iter(JobKind)), "CLOUD", "127.0.0.1", "DEST", "pacs")
    journal.add_instances(job, [record])  # the connection went back to the pool rolled back
    assert [r.sop_instance_uid for r in [record]] == [
        r["sop_instance_uid"]
        for r in journal.get(job, all_instances=True).instances  # type: ignore[union-attr]
    ]


def test_other_dialects_compile_and_go_through_sqlalchemy() -> None:
    for url in ("mssql+pyodbc://u:p@dsn", "oracle+oracledb://u:p@h/s"):
        engine: Any = create_mock_engine(url, lambda *a, **k: None)  # compiles; no driver needed
        writer = FastInsert(engine, job_instances, INSTANCE_COLUMNS)
        assert not writer.raw and writer.sql.startswith("INSERT INTO job_instances")


def test_its_connections_are_kept_and_a_lost_one_is_replaced(journal: Journal) -> None:
    """Issue 29: one DB-API connection reused call after call (no pool checkout per row), each
    row committed; a connection that went away is closed and replaced, the engine's pool untouched."""
    job = journal.start(next(iter(JobKind)), "CLOUD", "127.0.0.1", "DEST", "pacs")
    insert = FastInsert(journal.engine, job_instances, INSTANCE_COLUMNS)
    row = {"job_id": job, **InstanceRecord("1.2.3.1", "sent").__dict__}
    insert([row])
    kept = list(insert._idle)
    insert([{**row, "sop_instance_uid": "1.2.3.2"}])
    assert len(kept) == 1 and insert._idle == kept  # the same connection again
    kept[0].close()  # the server's side went away (a restart, an idle timeout)
    with pytest.raises(DBAPIError) as lost:
        insert([{**row, "sop_instance_uid": "1.2.3.3"}])
    assert lost.value.connection_invalidated and kept[0] not in insert._idle
    insert([{**row, "sop_instance_uid": "1.2.3.4"}])  # a new connection
    insert.close()
    assert insert._idle == []
    uids = [r["sop_instance_uid"] for r in journal.get(job, all_instances=True).instances]  # type: ignore[union-attr]
    assert sorted(uids) == ["1.2.3.1", "1.2.3.2", "1.2.3.4"]  # committed, each in its own call


def test_an_in_memory_sqlite_journal_gets_its_rows() -> None:
    """``sqlite://`` is one database per connection: the insert must use the engine's own (a
    connection of its own would write into another, empty database: "no such table")."""
    journal = Journal("sqlite://")
    job = journal.start(next(iter(JobKind)), "CLOUD", "127.0.0.1", "DEST", "pacs")
    journal.add_instances(job, [InstanceRecord("1.2.3.1", "sent")])
    journal.add_instances(job, [InstanceRecord("1.2.3.2", "sent"), InstanceRecord("1.2.3.3", "failed")])
    with journal.engine.connect() as conn:
        uids = [
            r[0] for r in conn.execute(select(job_instances.c.sop_instance_uid).order_by(job_instances.c.id))
        ]
    assert uids == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    journal.close()
