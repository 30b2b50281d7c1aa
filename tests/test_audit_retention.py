"""国密 and 等保 options of the audit trail (issue 28 item 5): the SM3 hash chain (GB/T 32905), a
chain that switches algorithm at a marked row, a trail from before ``hash_alg``, and retention
(``[audit] keep_days``: export, then delete, the chain still verifiable) — on SQLite, PostgreSQL
and MariaDB; the config's rules; ``dicomproxy audit purge``; a real ``serve`` writing SM3 rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.engine import Engine

from dicomproxy.audit import hashing
from dicomproxy.audit.hashing import SHA256, SM3, hasher, row_hash
from dicomproxy.audit.retention import PurgeRefused, purge
from dicomproxy.audit.trail import GENESIS, Action, AuditRecord, AuditTrail, audit_anchor, audit_log
from dicomproxy.cli import cli
from dicomproxy.config import Config, ConfigError
from dicomproxy.config import operations as config_operations
from dicomproxy.server import Server
from dicomproxy.transport.net import Remote, c_echo
from tests.conftest import ConfigFactory, push_cli_toml
from tests.test_audit import audit_engine, audit_mariadb, audit_pg  # noqa: F401  (SQLite, PostgreSQL, MariaDB)

#: GB/T 32905-2016 appendix A: example 1 ("abc") and example 2 ("abcd" × 16).
SM3_VECTORS = {
    b"abc": "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0",
    b"abcd" * 16: "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732",
}


def _record(i: int, when: dt.datetime | None = None) -> AuditRecord:
    return AuditRecord(
        Action.FIND,
        "success",
        calling_ae="jobserver",
        detail={"n": i, "name": "张三"},
        patient_ids=(f"P{i}",),
        time=when,
    )


@pytest.mark.parametrize("source", ["openssl", "gmssl"])
def test_sm3_gives_the_standard_s_test_vectors(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "gmssl":  # as on a machine whose OpenSSL lacks SM3
        monkeypatch.setattr(hashlib, "algorithms_available", hashlib.algorithms_available - {"sm3"})
    elif "sm3" not in hashlib.algorithms_available:
        pytest.skip("this OpenSSL has no SM3")
    assert hashing.sm3_source() == source
    for data, digest in SM3_VECTORS.items():
        assert hasher(SM3)(data) == digest


def test_sm3_where_there_is_none_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "sm3_source", lambda: "")
    with pytest.raises(ValueError, match="SM3 is not available"):
        hasher(SM3)
    with pytest.raises(ValueError, match="unknown hash algorithm 'md5'"):
        hasher("md5")


def test_an_sm3_row_hash_covers_its_algorithm() -> None:
    row: dict[str, Any] = {k: "" for k in hashing.HASHED} | {"seq": 1, "job_id": None}
    assert row_hash(GENESIS, row, SM3) != row_hash(GENESIS, row, SHA256)
    canonical = json.dumps(row | {"hash_alg": SM3}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert row_hash(GENESIS, row, SM3) == hasher(SM3)((GENESIS + canonical).encode())


def test_an_sm3_chain_verifies_and_an_edit_breaks_it(audit_engine: Engine) -> None:  # noqa: F811
    trail = AuditTrail(audit_engine, SM3)
    for i in range(4):
        trail.append(_record(i))
    result = trail.verify()
    assert (result.ok, result.rows) == (True, 4)
    assert {r["hash_alg"] for r in trail.rows()} == {SM3}
    with audit_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(calling_ae="SOMEONE"))
    result = trail.verify()
    assert (result.ok, result.broken_at) == (False, 2)


def test_a_chain_switches_algorithm_only_at_a_marked_row(audit_engine: Engine) -> None:  # noqa: F811
    """``[audit] hash`` changed from sha256 to sm3: the next write appends a ``hash-switch`` row
    (itself SM3) before its own; the chain verifies across it. An algorithm changed on another row —
    even with its hash recomputed — breaks the chain there."""
    old = AuditTrail(audit_engine)
    for i in range(3):
        old.append(_record(i))
    new = AuditTrail(audit_engine, SM3)
    assert new.append(_record(3)) == 5
    new.append(_record(4))
    rows = new.rows()
    assert [(r["action"], r["hash_alg"]) for r in rows] == [
        ("find", SHA256),
        ("find", SHA256),
        ("find", SHA256),
        (Action.HASH_SWITCH, SM3),
        ("find", SM3),
        ("find", SM3),
    ]
    assert json.loads(rows[3]["detail"]) == {"from": SHA256, "to": SM3}
    assert new.verify().ok and new.verify().rows == 6
    # switching back is marked the same way
    old.append(_record(5))
    assert [r["action"] for r in old.rows()][-2:] == [Action.HASH_SWITCH, "find"] and old.verify().ok
    # row 6 (SM3) rewritten as SHA-256, its hash recomputed: the chain breaks at row 6
    row = dict(rows[5])
    row["hash_alg"] = SHA256
    forged = row_hash(row["prev_hash"], row, SHA256)
    with audit_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 6).values(hash_alg=SHA256, hash=forged))
    result = new.verify()
    assert (result.ok, result.broken_at) == (False, 6)
    assert "no hash-switch" in result.problem


def test_a_trail_from_before_hash_alg_gets_the_column_and_still_verifies(audit_engine: Engine) -> None:  # noqa: F811
    """The table as the first release made it (no ``hash_alg``): opening the trail adds the column
    (its rows: SHA-256) and the chain verifies; new rows chain on."""
    meta = MetaData()
    legacy = Table(
        "audit_log",
        meta,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("time", DateTime, nullable=False),
        Column("action", String(24), nullable=False),
        Column("outcome", String(24), nullable=False),
        Column("calling_ae", String(16), nullable=False),
        Column("address", String(64), nullable=False),
        Column("tls_identity", String(256), nullable=False),
        Column("destination", String(16), nullable=False),
        Column("job_id", Integer),
        Column("detail", Text, nullable=False),
        Column("patient_ids", Text, nullable=False),
        Column("study_uids", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )
    head = Table(
        "audit_head",
        meta,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("seq", Integer, nullable=False),
        Column("hash", String(64), nullable=False),
    )
    meta.create_all(audit_engine)
    prev = GENESIS
    with audit_engine.begin() as conn:
        for seq in (1, 2):
            row: dict[str, Any] = {k: "" for k in hashing.HASHED} | {
                "seq": seq,
                "time": dt.datetime(2026, 1, 1, 8, 0, seq),
                "action": "find",
                "job_id": None,
                "detail": "{}",
            }
            row["prev_hash"], row["hash"] = prev, row_hash(prev, row)
            conn.execute(insert(legacy).values(**row))
            prev = row["hash"]
        conn.execute(insert(head).values(id=1, seq=2, hash=prev))
    trail = AuditTrail(audit_engine)
    trail.append(_record(3))
    assert [r["hash_alg"] for r in trail.rows()] == [SHA256] * 3
    result = trail.verify()
    assert (result.ok, result.rows) == (True, 3), result


def test_purge_exports_then_removes_the_old_prefix_and_the_chain_still_verifies(
    audit_engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    now = dt.datetime(2026, 12, 1, 12, 0, 0)
    old = now - dt.timedelta(days=200)
    trail = AuditTrail(audit_engine, SM3)
    for i in range(3):
        trail.append(_record(i, old + dt.timedelta(minutes=i)))
    trail.append(_record(3, now - dt.timedelta(days=10)))
    trail.append(_record(4, old))  # old, but after a young one: the chain is cut only at its start
    exported = trail.rows()[:3]
    done = purge(trail, now - dt.timedelta(days=180), tmp_path / "export")
    assert (done.count, done.first_seq, done.last_seq) == (3, 1, 3)
    assert done.file is not None and done.file.name == "audit-0000000001-0000000003.jsonl"
    lines = [json.loads(x) for x in done.file.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3] and [x["hash"] for x in lines] == [
        r["hash"] for r in exported
    ]
    assert done.digest == hasher(SM3)(done.file.read_bytes())
    # the export verifies on its own: each row's hash recomputed, chained from the genesis
    prev = GENESIS
    for x in lines:
        x["time"] = dt.datetime.fromisoformat(x["time"])
        assert x["prev_hash"] == prev and row_hash(prev, x, x["hash_alg"]) == x["hash"]
        prev = x["hash"]
    left = trail.rows()
    assert [r["seq"] for r in left] == [4, 5, 6] and left[-1]["action"] == Action.PURGE
    detail = json.loads(left[-1]["detail"])
    assert (detail["count"], detail["file"], detail["digest"]) == (3, done.file.name, done.digest)
    result = trail.verify()
    assert (result.ok, result.rows, result.last_seq) == (True, 3, 6), result
    assert purge(trail, now - dt.timedelta(days=180), tmp_path / "export").count == 0  # row 4 is young
    # the anchor is part of the chain: changing it breaks the verification at the first row after it
    with audit_engine.begin() as conn:
        conn.execute(update(audit_anchor).values(hash="f" * 64))
    result = trail.verify()
    assert (result.ok, result.broken_at) == (False, 4)


def test_a_broken_chain_is_never_purged(audit_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    trail = AuditTrail(audit_engine)
    old = dt.datetime(2020, 1, 1)
    for i in range(3):
        trail.append(_record(i, old))
    with audit_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(outcome="edited"))
    with pytest.raises(PurgeRefused, match="broken at record #2"):
        purge(trail, dt.datetime(2026, 1, 1), tmp_path / "export")
    assert not (tmp_path / "export").exists()
    with audit_engine.connect() as conn:
        assert len(conn.execute(select(audit_log.c.seq)).all()) == 3


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("keep_days = 30", r"audit.keep_days: must be 0 \(kept for ever\) or at least 180"),
        ('hash = "md5"', "hash"),
    ],
)
def test_audit_config_errors_name_the_key(tmp_path: Path, lines: str, message: str) -> None:
    from dicomproxy.config import load_config

    toml = push_cli_toml(tmp_path)
    toml.write_text(toml.read_text() + f"[audit]\n{lines}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(toml)
    assert str(toml) in str(info.value)


def test_sm3_asked_where_there_is_none_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomproxy.config import load_config

    monkeypatch.setattr(config_operations, "sm3_available", lambda: False)
    toml = push_cli_toml(tmp_path)
    toml.write_text(toml.read_text() + '[audit]\nhash = "sm3"\n')
    with pytest.raises(ConfigError, match="gmssl"):
        load_config(toml)
    toml.write_text(toml.read_text().replace('hash = "sm3"', 'keep_days = 0\nexport_dir = "exports"'))
    config = load_config(toml)
    assert (config.audit.keep_days, config.audit.export_dir) == (0, str(tmp_path / "exports"))


def test_audit_purge_cli(tmp_path: Path) -> None:
    toml = push_cli_toml(tmp_path)
    toml.write_text(toml.read_text() + '[audit]\nhash = "sm3"\n')
    from dicomproxy.relay.journal import Journal

    journal = Journal.for_config("", tmp_path / "var")
    try:
        trail = AuditTrail(journal.engine, SM3)
        for i in range(2):
            trail.append(_record(i, dt.datetime(2020, 1, 1)))
        trail.append(_record(2))
    finally:
        journal.close()
    run = CliRunner().invoke
    out = run(cli, ["audit", "purge", "-c", str(toml), "--dry-run"])
    assert out.exit_code == 0 and "2 record(s) older than 180 days" in out.output, out.output
    out = run(cli, ["audit", "purge", "-c", str(toml)])
    assert out.exit_code == 0, out.output
    assert "2 record(s) #1–#2 exported to" in out.output and "audit-export" in out.output
    out = run(cli, ["audit", "verify", "-c", str(toml)])
    assert out.exit_code == 0 and "intact: 2 record(s), last #4" in out.output, out.output


def test_serve_with_sm3_writes_sm3_rows(make_config: ConfigFactory, run_proxy: Any) -> None:
    config: Config = make_config(audit={"hash": "sm3"})
    server: Server = run_proxy(config)
    assert c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", server.port))
    server.stop()
    trail = AuditTrail(server.ctx.journal.engine)
    rows = trail.rows()
    assert {r["action"] for r in rows} >= {"start", "association", "stop"}
    assert {r["hash_alg"] for r in rows} == {SM3} and trail.verify().ok
