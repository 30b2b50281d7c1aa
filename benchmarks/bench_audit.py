"""Appending to the audit trail: one row per transaction against group commit (issue 29; not a test).

``--records`` FindDone records (made by the audit subscriber from real FindDone events, keys and
peer as a PACS client sends them) are appended to an empty trail on SQLite (a file) and/or
PostgreSQL (a database of its own, created and dropped), in rounds A B C D A B C D…:

- ``main``: one transaction per row with the statements built per row — main's ``append`` before
  issue 29, copied below as the baseline;
- ``append``: one transaction per row, statements built once (today's ``AuditTrail.append``);
- ``batch N``: ``AuditTrail.append_many`` of N records (what one drained events batch costs);
- ``bus``: all records published on an events bus of its own with the ``AuditSubscriber``, then
  ``flush()`` (the batches are whatever the dispatcher drained).

Prints µs per record (median of the rounds) and the ratio to ``main``; every trail verifies.

    .venv/bin/python benchmarks/bench_audit.py --db sqlite --db postgresql --records 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text, update
from sqlalchemy.engine import Connection, Engine, make_url

from dicomproxy import events
from dicomproxy.audit.hashing import row_hash
from dicomproxy.audit.trail import (
    AUDIT_METADATA,
    GENESIS,
    Action,
    AuditRecord,
    AuditSubscriber,
    AuditTrail,
    _row,
    audit_head,
    audit_log,
)

PG_URL = os.environ.get("DICOMPROXY_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def find_events(n: int) -> list[events.FindDone]:
    peer = events.Peer("JOBSERVER", "10.1.2.3", 40312, "")
    return [
        events.FindDone(
            peer,
            "STUDY",
            "STUDY",
            "view",
            {"PatientID": f"P{i:07d}", "StudyDate": "20260101-20261231", "ModalitiesInStudy": "CT"},
            matches=i % 7,
            status=0,
            seconds=0.004,
        )
        for i in range(n)
    ]


def legacy_append(trail: AuditTrail, record: AuditRecord) -> int:
    """``AuditTrail.append`` as on main before issue 29 (statements built per row)."""
    with trail.engine.begin() as conn:
        return _legacy_append_in(trail, conn, record)


def _legacy_append_in(trail: AuditTrail, conn: Connection, record: AuditRecord) -> int:
    res = conn.execute(update(audit_head).where(audit_head.c.id == 1).values(id=1))
    if not res.rowcount:
        conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
    head = conn.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).one()
    seq, prev = int(head.seq), str(head.hash)
    conn.execute(select(audit_log.c.hash_alg).where(audit_log.c.seq == seq)).scalar()
    row: dict[str, Any] = {**_row(record), "seq": seq + 1, "prev_hash": prev, "hash_alg": trail.hash_alg}
    row["hash"] = row_hash(prev, row, trail.hash_alg)
    conn.execute(insert(audit_log).values(**row))
    seq, prev = int(row["seq"]), str(row["hash"])
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
    return seq


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[Engine]:
    if kind == "sqlite":
        path = workdir / f"audit-{uuid.uuid4().hex[:6]}.db"
        engine = create_engine(f"sqlite:///{path}")
        try:
            yield engine
        finally:
            engine.dispose()
            path.unlink(missing_ok=True)
        return
    name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine = create_engine(make_url(PG_URL).set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def run_mode(mode: str, engine: Engine, found: list[events.FindDone]) -> tuple[float, float]:
    """Seconds (wall, and CPU of this process: what competes with the DICOM threads for the GIL)
    to append every record of ``found`` to an empty trail the way ``mode`` says."""
    AUDIT_METADATA.drop_all(engine)
    trail = AuditTrail(engine)
    sub = AuditSubscriber(trail)
    records = [r for r in (sub.record_for(e) for e in found) if r is not None]
    trail.append(AuditRecord(Action.START, "success"))  # the head exists, as in a running proxy
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "main":
        for r in records:
            legacy_append(trail, r)
    elif mode == "append":
        for r in records:
            trail.append(r)
    elif mode.startswith("batch "):
        size = int(mode.split()[1])
        for start in range(0, len(records), size):
            trail.append_many(records[start : start + size])
    elif mode == "bus":
        bus = events.Bus()
        bus.subscribe(sub)
        for e in found:
            bus.publish(e)
        if not bus.flush(120):
            raise SystemExit("the bus did not flush")
    else:
        raise ValueError(mode)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = trail.verify()
    if not (result.ok and result.rows == len(records) + 1):
        raise SystemExit(f"{mode}: the chain does not verify: {result}")
    return seconds, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", action="append", choices=["sqlite", "postgresql"], help="default: both")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default: 10, 100, 500)")
    args = ap.parse_args(argv)
    modes = ["main", "append", *[f"batch {n}" for n in (args.batch or [10, 100, 500])], "bus"]
    found = find_events(args.records)
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        for kind in args.db or ["sqlite", "postgresql"]:
            with database(kind, Path(tmp)) as engine:
                times: dict[str, list[float]] = {m: [] for m in modes}
                cpus: dict[str, list[float]] = {m: [] for m in modes}
                for _ in range(args.rounds):
                    for mode in modes:
                        wall, cpu = run_mode(mode, engine, found)
                        times[mode].append(wall)
                        cpus[mode].append(cpu)
                base, cpu_base = statistics.median(times["main"]), statistics.median(cpus["main"])
                per = 1e6 / args.records
                print(f"\n{kind}: {args.records} FindDone records, median of {args.rounds} rounds, µs/record")
                print(f"  {'mode':10} {'wall':>6} {'range':>13} {'× main':>7} {'CPU':>6} {'× main':>7}")
                for mode in modes:
                    med, cpu = statistics.median(times[mode]), statistics.median(cpus[mode])
                    lo, hi = min(times[mode]), max(times[mode])
                    print(
                        f"  {mode:10} {med * per:6.0f} {lo * per:6.0f}–{hi * per:<6.0f} {med / base:7.3f}"
                        f" {cpu * per:6.0f} {cpu / cpu_base:7.3f}"
                    )
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
