"""The audit trail (issue 15): the hash chain on every journal database (an edited, removed or added
row is found by `audit verify`), and the trail of real traffic (C-ECHO, C-FIND, a C-MOVE relayed
from Orthanc to storescp, a rejected association, start and stop) read with `dicomproxy audit`."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, delete, func, insert, select, text, update
from sqlalchemy.engine import Engine

from dicomproxy import events
from dicomproxy.audit.trail import AUDIT_METADATA, Action, AuditRecord, AuditTrail, audit_log, row_hash
from dicomproxy.cli import cli
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.findscu import run_find
from dicomproxy.transport.net import Remote, c_echo
from testkit.orthanc import Orthanc
from testkit.samples import demo_specs
from tests.conftest import MARIADB_URL, PG_URL, ConfigFactory, _fresh_database, push_cli_toml

CT, MR, US, MF = demo_specs()


@pytest.fixture(scope="module")
def audit_pg() -> Iterator[str]:
    """A PostgreSQL database of this module's own: the audit tables have fixed names, and a shared
    database would let two concurrent runs (xdist workers, other checkouts) drop each other's."""
    yield from _fresh_database("postgresql", PG_URL)


@pytest.fixture(scope="module")
def audit_mariadb() -> Iterator[str]:
    """A MariaDB database of this module's own (see ``audit_pg``)."""
    yield from _fresh_database("mariadb", MARIADB_URL)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def audit_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty audit trail in each real database the journal may live in."""
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        url = request.getfixturevalue("audit_pg" if kind == "postgresql" else "audit_mariadb")
    engine = create_engine(url)
    AUDIT_METADATA.drop_all(engine)
    try:
        yield engine
    finally:
        AUDIT_METADATA.drop_all(engine)
        engine.dispose()


def _fill(trail: AuditTrail, n: int = 5) -> None:
    for i in range(n):
        trail.append(
            AuditRecord(
                Action.FIND,
                "success",
                calling_ae="jobserver",
                address="127.0.0.1:40000",
                detail={
                    "level": "STUDY",
                    "keys": {"PatientID": f"P{i}", "PatientName": "张三"},
                    "matches": i,
                },
                patient_ids=(f"P{i}",),
            )
        )


def test_chain_intact_and_filters(audit_engine: Engine) -> None:
    trail = AuditTrail(audit_engine)
    _fill(trail)
    result = trail.verify()
    assert (result.ok, result.rows, result.last_seq) == (True, 5, 5)
    assert [r["seq"] for r in trail.rows(patient="P3")] == [4]
    assert trail.rows(patient="P") == []  # whole identifiers only
    assert json.loads(trail.rows(patient="P1")[0]["detail"])["keys"]["PatientName"] == "张三"


@pytest.mark.parametrize(
    ("tamper", "broken_at", "problem"),
    [
        ("edit", 3, "edited"),
        ("delete-middle", 3, "missing"),
        ("delete-last", 5, "removed"),
        ("insert", 6, "previous hash"),
        ("rehash-edit", 4, "previous hash"),
    ],
)
def test_verify_finds_tampering(audit_engine: Engine, tamper: str, broken_at: int, problem: str) -> None:
    trail = AuditTrail(audit_engine)
    _fill(trail)
    with audit_engine.begin() as conn:
        if tamper == "edit":
            conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(calling_ae="SOMEONE"))
        elif tamper == "delete-middle":
            conn.execute(delete(audit_log).where(audit_log.c.seq == 3))
        elif tamper == "delete-last":
            conn.execute(delete(audit_log).where(audit_log.c.seq == 5))
        elif tamper == "insert":
            row = dict(conn.execute(select(audit_log).where(audit_log.c.seq == 5)).mappings().one())
            conn.execute(insert(audit_log).values(**{**row, "seq": 6, "prev_hash": "f" * 64}))
        else:  # edit row 3 and recompute its own hash: row 4 no longer follows
            from dicomproxy.audit.trail import row_hash

            row = dict(conn.execute(select(audit_log).where(audit_log.c.seq == 3)).mappings().one())
            row["calling_ae"] = "SOMEONE"
            conn.execute(
                update(audit_log)
                .where(audit_log.c.seq == 3)
                .values(calling_ae="SOMEONE", hash=row_hash(row["prev_hash"], row))
            )
    result = trail.verify()
    assert not result.ok
    assert result.broken_at == broken_at and problem in result.problem
    # what can still be trusted: the rows before the break, and the last of them
    assert result.rows == result.last_seq == broken_at - 1
    assert result.last_hash == trail.rows()[broken_at - 2]["hash"]


def test_row_hash_is_a_stable_format() -> None:
    """A trail written by an earlier version must still verify: the hash of a fixed row is pinned
    (SHA-256 of the previous hash + canonical JSON: sorted keys, no spaces, UTF-8, time to the second)."""
    row = {
        "seq": 1,
        "time": dt.datetime(2026, 1, 1, 8, 0, 0),
        "action": "move",
        "outcome": "success",
        "calling_ae": "jobserver",
        "address": "127.0.0.1:4000",
        "tls_identity": "",
        "destination": "DEST",
        "job_id": 7,
        "detail": '{"name": "张三"}',
        "patient_ids": " P1 ",
        "study_uids": " 1.2.3 ",
    }
    assert row_hash("0" * 64, row) == "8298af3b0ef6c68623cee194f0f4c0d72e0b0a636e39d8f9f8c5d194c0fb3cf7"


def test_rows_are_stored_canonical_and_cut_to_their_columns(audit_engine: Engine) -> None:
    """Identifiers longer than their columns are cut to the column (every database takes the row);
    the detail is stored as canonical JSON (sorted keys), whatever order the event gave."""
    trail = AuditTrail(audit_engine)
    trail.append(
        AuditRecord(
            Action.MOVE,
            "success",
            calling_ae=" " + "A" * 20 + " ",
            address="h" * 70,
            tls_identity="CN=" + "x" * 300,
            destination="D" * 20,
            detail={"zeta": 1, "alpha": {"b": 2, "a": 1}, "name": "张三"},
            patient_ids=(" P1 ", "", "  ", "P2"),
            time=dt.datetime(2026, 1, 1, 16, 0, 0, 500, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        )
    )
    (row,) = trail.rows()
    assert (
        len(row["calling_ae"]),
        len(row["address"]),
        len(row["tls_identity"]),
        len(row["destination"]),
    ) == (
        16,
        64,
        256,
        16,
    )
    assert row["calling_ae"] == "A" * 16
    assert row["detail"] == '{"alpha": {"a": 1, "b": 2}, "name": "张三", "zeta": 1}'  # readable in SQL
    assert row["time"] == dt.datetime(2026, 1, 1, 8, 0, 0)  # naive UTC, whole seconds
    assert row["patient_ids"] == " P1 P2 "
    assert trail.verify().ok


def test_row_filters_by_time_and_literal_identifiers(audit_engine: Engine) -> None:
    """--since is inclusive, --until exclusive (whole seconds, UTC); --patient/--study match whole
    identifiers literally (``_`` and ``%`` are not wildcards)."""
    trail = AuditTrail(audit_engine)
    t0 = dt.datetime(2026, 1, 1, 8, 0, 0, tzinfo=dt.timezone.utc)
    for i in range(3):
        trail.append(
            AuditRecord(
                Action.FIND,
                "success",
                calling_ae=f"AE{i}",
                patient_ids=(f"P.{i}",),
                study_uids=(f"1.2.{i}",),
                time=t0 + dt.timedelta(hours=i),
            )
        )
    seqs = lambda rows: [r["seq"] for r in rows]  # noqa: E731
    assert seqs(trail.rows()) == [1, 2, 3]
    assert seqs(trail.rows(since=t0 + dt.timedelta(hours=1))) == [2, 3]
    assert seqs(trail.rows(until=t0 + dt.timedelta(hours=1))) == [1]
    assert seqs(trail.rows(since=t0, until=t0 + dt.timedelta(hours=2))) == [1, 2]
    assert seqs(trail.rows(study="1.2.1")) == [2]
    assert trail.rows(study="1_2.1") == [] and trail.rows(study="1.2%") == []
    assert trail.rows(patient="P_1") == [] and seqs(trail.rows(patient="P.1")) == [2]
    assert seqs(trail.rows(limit=2)) == [1, 2]
    assert seqs(trail.rows(peer=" AE1 ")) == [2]


# --- real traffic ------------------------------------------------------------------------------------


def _toml(tmp_path: Path, config: Config) -> Path:
    """A config file for the CLI that reads the same journal as ``config``."""
    path = tmp_path / "cli.toml"
    path.write_text(
        f"""
[proxy]
data_dir = "{config.data_path}"
[hospital]
id = "{config.hospital.id}"
[view]
url = "{config.view.url}"
[pacs]
ae_title = "{config.pacs.ae_title}"
host = "{config.pacs.host}"
port = {config.pacs.port}
[[peers]]
ae_title = "DEST"
host = "127.0.0.1"
port = {config.peer("DEST").port}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_trail_of_real_traffic_and_the_audit_command(
    orthanc: Orthanc,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    storescp: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    dest = storescp("DEST")
    r = orthanc.remote
    config = make_config(
        pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port, "retrieve": "c-get"},
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port},
            {"ae_title": "FINDONLY", "host": "127.0.0.1", "port": 1, "services": ["find"]},
        ],
    )
    server = run_proxy(config)
    proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)
    assert c_echo("jobserver", proxy).ok
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = CT.patient.patient_id
    q.StudyInstanceUID = ""
    found = run_find("jobserver", proxy, "study", q)
    assert found.status == 0
    m = Dataset()
    m.QueryRetrieveLevel = "STUDY"
    m.StudyInstanceUID = CT.study_uid
    assert scu.move(proxy, "DEST", m, calling_ae="jobserver").completed == 10
    assert not c_echo("STRANGER", proxy).ok
    other = Dataset()
    other.QueryRetrieveLevel = "STUDY"
    other.StudyInstanceUID = MR.study_uid
    assert scu.move(proxy, "DEST", other, calling_ae="FINDONLY").status == 0x0124  # not permitted
    server.stop(drain_timeout=2.0)  # the stop record; the trail is flushed before the journal closes

    # patient data is in the trail, never in the proxy's INFO logs (pynetdicom's are the test's SCU)
    for rec in caplog.records:
        if rec.levelno >= logging.INFO and rec.name.startswith("dicomproxy"):
            assert CT.patient.patient_id not in rec.getMessage() and CT.study_uid not in rec.getMessage()

    toml = _toml(tmp_path, config)
    runner = CliRunner()
    out = runner.invoke(cli, ["audit", "-c", str(toml), "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    actions = [(row["action"], row["outcome"]) for row in rows]
    assert actions[0] == ("start", "success") and actions[-1] == ("stop", "success")
    assert ("association", "rejected") in actions and ("find", "success") in actions
    (find,) = [row for row in rows if row["action"] == "find"]
    assert find["calling_ae"] == "jobserver" and find["address"].startswith("127.0.0.1:")
    assert find["detail"]["keys"]["PatientID"] == CT.patient.patient_id
    assert find["detail"]["matches"] == found_count(found)
    (move,) = [row for row in rows if row["action"] == "move" and row["outcome"] != "refused"]
    (refused,) = [row for row in rows if row["action"] == "move" and row["outcome"] == "refused"]
    assert (refused["calling_ae"], refused["destination"], refused["detail"]["status"]) == (
        "FINDONLY",
        "DEST",
        0x0124,
    )
    assert refused["study_uids"] == [MR.study_uid]
    assert (move["outcome"], move["destination"], move["detail"]["instances"]) == ("success", "DEST", 10)
    assert move["study_uids"] == [CT.study_uid] and move["detail"]["resolved_study_uids"] == [CT.study_uid]
    assert move["patient_ids"] == [CT.patient.patient_id] and move["detail"]["accession_numbers"] == [
        CT.accession
    ]
    (rejected,) = [row for row in rows if row["outcome"] == "rejected"]
    assert rejected["calling_ae"] == "STRANGER" and "not a configured peer" in rejected["detail"]["reason"]

    by_patient = json.loads(
        runner.invoke(cli, ["audit", "-c", str(toml), "--json", "--patient", "P0001"]).output
    )
    assert [row["action"] for row in by_patient] == ["find", "move"]  # the move's patient: from the view
    by_study = json.loads(
        runner.invoke(cli, ["audit", "-c", str(toml), "--json", "--study", CT.study_uid]).output
    )
    assert [row["action"] for row in by_study] == ["move"]
    by_peer = json.loads(
        runner.invoke(cli, ["audit", "-c", str(toml), "--json", "--peer", "STRANGER"]).output
    )
    assert [row["outcome"] for row in by_peer] == ["rejected"]
    future = runner.invoke(cli, ["audit", "-c", str(toml), "--json", "--since", "2999-01-01"])
    assert json.loads(future.output) == []
    csv_out = runner.invoke(
        cli, ["audit", "-c", str(toml), "--csv", "--study", CT.study_uid]
    ).output.splitlines()
    assert csv_out[0].startswith("seq,time,action") and len(csv_out) == 2
    table = runner.invoke(cli, ["audit", "-c", str(toml)]).output
    assert "rejected" in table and "STRANGER" in table

    # `jobs retry` is audited (who: the OS user), even when there is nothing to resend
    retried = runner.invoke(cli, ["jobs", "-c", str(toml), "retry", str(move["job_id"])])
    assert retried.exit_code == 0, retried.output
    after = json.loads(runner.invoke(cli, ["audit", "-c", str(toml), "--json"]).output)
    assert (after[-1]["action"], after[-1]["outcome"], after[-1]["job_id"]) == (
        "retry",
        "requested",
        move["job_id"],
    )

    ok = runner.invoke(cli, ["audit", "-c", str(toml), "verify"])
    assert ok.exit_code == 0 and "intact" in ok.output
    assert runner.invoke(cli, ["audit", "verify", "-c", str(toml)]).output == ok.output  # either order
    engine = create_engine(f"sqlite:///{config.data_path / 'journal.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET destination = 'ELSEWHERE' WHERE action = 'move'"))
    engine.dispose()
    broken = runner.invoke(cli, ["audit", "-c", str(toml), "verify"])
    assert broken.exit_code == 1 and f"#{move['seq']}" in broken.output and "edited" in broken.output


def found_count(found: Any) -> int:
    return len(found.answers)


def test_events_without_subscribers_are_dropped() -> None:
    """Publishing with nobody listening queues nothing (the relay's per-instance cost stays a check)."""
    bus = events.Bus()
    bus.publish(events.Failure(where="pacs", message="x"))
    assert bus._queue.qsize() == 0
    got: list[events.Event] = []
    bus.subscribe(got.append)
    bus.publish(events.Failure(where="pacs", message="y"))
    assert bus.flush()
    assert [e.message for e in got if isinstance(e, events.Failure)] == ["y"]


# --- every column is covered, and the newest row too (issue 24) ----------------------------------------


def _forged(column: str, value: Any) -> Any:
    """A different value of the column's type."""
    if column == "seq":
        return 99
    if column == "job_id":
        return 4242
    if column == "time":
        return value + dt.timedelta(days=1)
    if column == "detail":
        return json.dumps({"level": "STUDY", "keys": {"PatientID": "FORGED"}, "matches": 0})
    if column in ("prev_hash", "hash"):
        return "e" * 64
    if column in ("patient_ids", "study_uids"):
        return " FORGED "
    return "FORGED"


@pytest.mark.parametrize("column", [c.name for c in audit_log.columns])
def test_verify_finds_an_edit_of_every_column(audit_engine: Engine, column: str) -> None:
    """Each column of a row (the table's own list, so a column added later is covered too) is part
    of the chain: editing it in row 3 breaks the chain at row 3."""
    trail = AuditTrail(audit_engine)
    _fill(trail)
    with audit_engine.begin() as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.seq == 3)).mappings().one()
        forged = _forged(column, row[column])
        assert forged != row[column]
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values({column: forged}))
    result = trail.verify()
    assert not result.ok, f"an edit of {column} verifies as intact"
    assert result.broken_at == 3 and result.rows == 2, result


def _rehash_newest(engine: Engine, **values: Any) -> int:
    """Edit the newest row and recompute its own hash (nothing follows it to notice); its seq."""
    with engine.begin() as conn:
        seq = conn.execute(select(func.max(audit_log.c.seq))).scalar_one()
        row = dict(conn.execute(select(audit_log).where(audit_log.c.seq == seq)).mappings().one())
        row.update(values)
        row["hash"] = row_hash(row["prev_hash"], row)
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(**row))
    return int(seq)


def test_verify_compares_the_chain_head(audit_engine: Engine) -> None:
    """Only the chain head can tell that the newest row was edited and rehashed; the message names
    that row (not "rows after it were removed")."""
    trail = AuditTrail(audit_engine)
    _fill(trail)
    assert _rehash_newest(audit_engine, patient_ids=" FORGED ") == 5
    result = trail.verify()
    assert not result.ok, "an edit of the newest row, rehashed, verifies as intact"
    assert (result.broken_at, result.rows, result.last_seq) == (5, 4, 4)
    assert result.problem == "row 5 does not match the chain head's hash (edited)"
    assert result.last_hash == trail.rows()[3]["hash"]  # the last row that can be trusted


def test_verify_names_rows_added_after_the_chain_head(audit_engine: Engine) -> None:
    trail = AuditTrail(audit_engine)
    _fill(trail, 2)
    with audit_engine.begin() as conn:
        row = dict(conn.execute(select(audit_log).where(audit_log.c.seq == 2)).mappings().one())
        added = {**row, "seq": 3, "prev_hash": row["hash"], "calling_ae": "SOMEONE"}
        added["hash"] = row_hash(row["hash"], added)
        conn.execute(insert(audit_log).values(**added))
    result = trail.verify()
    assert (result.ok, result.broken_at, result.rows) == (False, 3, 2)
    assert "rows after it were added" in result.problem


def test_audit_verify_command_names_the_edited_row(tmp_path: Path) -> None:
    toml = push_cli_toml(tmp_path)
    (tmp_path / "var").mkdir()
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'journal.db'}")
    trail = AuditTrail(engine)
    _fill(trail)
    _rehash_newest(engine, calling_ae="SOMEONE")
    engine.dispose()
    out = CliRunner().invoke(cli, ["audit", "verify", "-c", str(toml)])
    assert out.exit_code == 1
    assert "BROKEN at record #5: row 5 does not match the chain head" in out.output, out.output
    assert "removed" not in out.output
