"""Two ``dicomproxy serve`` processes share one PostgreSQL journal (the push queue and watermark);
one is SIGKILLed mid-study. Every study arrives at the DCMTK storescp, every SOP Instance once
(``+uf``: each arrival is its own file), nothing lost: the survivor takes the dead node's item
over when its lease expires and sends only what the destination had not confirmed.

The PACS is the controllable pynetdicom PACS (C-GET), held at a gate after the first instance of
each retrieval so that the kill lands mid-study, deterministically (events, no sleeps)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, func, select

from dicomproxy.push.queue import PushQueue, push_queue
from dicomproxy.relay.journal import job_instances
from testkit import wait_until
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.nodes import ServeNodes, peer
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows

pytestmark = pytest.mark.slow

STUDIES = [
    StudySpec("CT", accession=f"PN{i:03d}", series=1, images_per_series=3, seed=300 + i) for i in range(4)
]


def _nodes(
    tmp: Path, journal_url: str, pacs: FakePacs, scp: StoreSCP | FakeDestination, lease: float = 3
) -> ServeNodes:
    """``serve`` nodes on ``journal_url`` pushing every study of the view to ``scp`` (STORESCP)."""
    return ServeNodes(
        tmp, journal_url, pacs.remote, [peer(scp.remote)], calling="STORESCP",
        proxy={"retries": 1, "retry_delay": 0.1}, pacs={"dimse_timeout": 30}, journal={"resume_window": 0},
        push={"enabled": True, "destinations": ["STORESCP"], "start_from": "beginning", "poll_interval": 0.3,
              "retry_delay": 0.3, "max_retry_delay": 1.0, "max_concurrent": 1, "lease": lease},
    )  # fmt: skip


def test_two_nodes_one_killed_mid_study_every_study_once(tmp_path: Path, pg_journal: str) -> None:
    files = [p for spec in STUDIES for p in write_study(spec, tmp_path / "studies" / spec.accession)]
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec) for spec in STUDIES])
    engine.dispose()
    pacs = FakePacs(files).start()
    pacs.behaviour.gate_at = 1  # every retrieval stops after its first instance until released
    scp = StoreSCP(
        tmp_path / "scp", "STORESCP", extra=["+uf", "--fork"]
    ).start()  # one process per association
    journal = create_engine(pg_journal)
    rig = _nodes(tmp_path, pg_journal, pacs, scp)
    try:
        nodes = rig.start()

        def running() -> list[tuple[str, int]]:
            with journal.connect() as conn:
                rows = conn.execute(
                    select(push_queue.c.owner, push_queue.c.last_job).where(push_queue.c.state == "running")
                ).all()
            return [(str(o), int(j)) for o, j in rows if j is not None]

        def confirmed(job_id: int) -> int:
            with journal.connect() as conn:
                q = select(func.count()).where(
                    job_instances.c.job_id == job_id, job_instances.c.state == "sent"
                )
                return int(conn.execute(q).scalar() or 0)

        # both nodes mid-study: each holds one item, its first instance confirmed, the rest held back
        wait_until(
            lambda: len(running()) == 2 and all(confirmed(j) for _, j in running()), 60, "two studies mid-way"
        )
        owners = {o for o, _ in running()}
        victim = next(n for n in nodes if any(f":{n.process.proc.pid}:" in o for o in owners))
        victim.process.kill()  # SIGKILL: no drain, no release, its lease just stops being renewed
        pacs.behaviour.gate_at = None
        pacs.behaviour.gate.set()

        expected = {spec.sop_uid(0, i) for spec in STUDIES for i in range(spec.images_per_series)}

        def arrived() -> Counter[str]:
            return Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received())

        wait_until(lambda: set(arrived()) == expected, 90, "every instance at storescp")

        def states() -> set[str]:
            with journal.connect() as conn:
                return {str(r[0]) for r in conn.execute(select(push_queue.c.state))}

        wait_until(lambda: states() == {"done"}, 30, "every item done")
        with journal.connect() as conn:
            owners_done = {str(r[0]) for r in conn.execute(select(push_queue.c.owner))}
        counts = arrived()
        assert max(counts.values()) == 1, counts  # every study once: nothing sent twice
        survivor = next(n for n in nodes if n is not victim)
        assert all(
            f":{survivor.process.proc.pid}:" in o for o in owners_done
        )  # it finished the victim's item
    finally:
        rig.stop()
        journal.dispose()
        pacs.stop()
        scp.stop()


def test_clean_stop_mid_study_gives_the_item_back(tmp_path: Path, make_config: Any, run_proxy: Any) -> None:
    """SIGTERM-like stop while a delivery runs: the job is cancelled, the item is due again at once
    (for any node) without an attempt counted, and the next start sends only what is missing."""
    spec = STUDIES[0]
    files = write_study(spec, tmp_path / "study")
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec)])
    engine.dispose()
    pacs = FakePacs(files).start()
    pacs.behaviour.gate_at = 1
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    try:
        config = make_config(
            view={"url": view_url},
            pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port, "retrieve": "c-get"},
            peers=[{"ae_title": "STORESCP", "host": "127.0.0.1", "port": scp.port}],
            push={
                "enabled": True,
                "destinations": ["STORESCP"],
                "start_from": "beginning",
                "poll_interval": 0.2,
            },
        )
        server = run_proxy(config)
        queue = PushQueue(server.ctx.journal.engine, "test")
        wait_until(lambda: pacs.behaviour.at_gate.is_set() and len(scp.received()) == 1, 30, "mid-study")
        assert queue.items()[0]["state"] == "running"
        server.stop(drain_timeout=10.0)  # the PACS still holds the rest back: the pump sees the stop
        pacs.behaviour.gate_at = None
        pacs.behaviour.gate.set()
        item = queue.items()[0]
        assert (item["state"], item["attempts"], item["lease_until"]) == ("queued", 0, None)
        server = run_proxy(config)
        queue = PushQueue(server.ctx.journal.engine, "test")
        wait_until(lambda: queue.items()[0]["state"] == "done", 30, "delivered after the restart")
        arrived = Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received())
        assert set(arrived) == {spec.sop_uid(0, i) for i in range(spec.images_per_series)}
        assert max(arrived.values()) == 1, arrived
    finally:
        pacs.stop()
        scp.stop()


def test_a_delivery_longer_than_its_lease_keeps_it_and_is_not_taken_over(
    tmp_path: Path, pg_journal: str
) -> None:
    """Two nodes on one PostgreSQL journal, a lease of 1 s, a destination that holds one C-STORE
    for several leases: the owner renews its lease while it delivers (every lease / 3), so the
    other node — polling every 0.3 s — never takes the item over, and every instance arrives once."""
    spec = STUDIES[1]
    files = write_study(spec, tmp_path / "study")
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec)])
    engine.dispose()
    pacs = FakePacs(files).start()
    dest = FakeDestination("STORESCP")
    dest.behaviour.hold_from = 1  # from the second instance on, answered only when the test lets it
    dest.start()
    journal = create_engine(pg_journal)
    rig = _nodes(tmp_path, pg_journal, pacs, dest, lease=1)
    try:
        rig.start()

        def item() -> Any:
            with journal.connect() as conn:
                return conn.execute(
                    select(
                        push_queue.c.owner,
                        push_queue.c.lease_until,
                        push_queue.c.takeovers,
                        push_queue.c.state,
                    )
                ).one()

        wait_until(dest.behaviour.holding.is_set, 30, "the delivery held at the destination")
        first = item()
        assert first.state == "running"
        # three leases' time later (by the journal's own clock: lease_until moved that far), still ours
        wait_until(
            lambda: item().takeovers > 0 or item().lease_until >= first.lease_until + dt.timedelta(seconds=3),
            30,
            "the lease renewed three times over, or taken over",
        )
        now = item()
        assert (now.owner, now.takeovers) == (first.owner, 0), (
            f"taken over mid-delivery: {first.owner} -> {now.owner}, takeovers {now.takeovers}"
        )
        dest.behaviour.hold.set()
        wait_until(lambda: item().state == "done", 30, "item done")
        done = item()
        assert (done.owner, done.takeovers) == (first.owner, 0)
        received = Counter(uid for uid, _ in dest.received)
        assert received == {spec.sop_uid(0, i): 1 for i in range(spec.images_per_series)}, received
    finally:
        dest.behaviour.hold.set()
        rig.stop()
        journal.dispose()
        pacs.stop()
        dest.stop()
