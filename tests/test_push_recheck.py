"""Re-checks of delivered studies (``[push] recheck_after``, ``rechecks``): images that reach the
PACS after a study was delivered are sent by a later re-check, and only they; a study whose PACS
count did not grow costs one STUDY-level C-FIND per re-check and no job.

End to end: Orthanc as the PACS (C-GET), DCMTK storescp with ``+uf`` (a unique file per arrival:
a duplicate shows as a second file). Then the schedule (:func:`next_recheck`), the config, the
queue on SQLite, PostgreSQL and MariaDB (claims, resets, the migration of an existing journal),
the re-check's decision against stub archives (count, no count, PACS down, order/report objects,
which archive), and ``push status``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, Integer, MetaData, create_engine, insert, text
from sqlalchemy import inspect as sa_inspect

from dicomproxy.cli import cli
from dicomproxy.config import Config, PushConfig, parse_config
from dicomproxy.errors import ConfigError, PacsUnavailable
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.pacs.client import InstanceRef, RetrieveKey, StudySummary
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.push.decide import next_recheck
from dicomproxy.push.queue import (
    DONE,
    QUEUED,
    RUNNING,
    WAITING,
    Entry,
    Item,
    PushQueue,
    migrate,
    utcnow,
)
from dicomproxy.push.service import PushService
from dicomproxy.relay.journal import InstanceRecord, Journal, job_instances
from dicomproxy.reports.encode import ENCAPSULATED_PDF
from dicomproxy.server import Server
from dicomproxy.status import JobKind, JobOutcome
from testkit import wait_until
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows
from tests import test_push_takeover
from tests.conftest import ConfigFactory, base_config_dict, push_cli_toml, running_orthanc
from tests.test_push import _config, delivered, study_sops
from tests.test_push_takeover import LEASE, START, Clock, _enqueue, _old_push_queue, _row

# the queue tests' fixtures: a journal on SQLite, PostgreSQL and MariaDB, a shared clock, nodes
clock = test_push_takeover.clock
journal = test_push_takeover.journal
nodes = test_push_takeover.nodes

GROW = StudySpec("CT", accession="RC001", series=2, images_per_series=2, seed=301)
STILL = StudySpec("CT", accession="RC002", series=1, images_per_series=2, seed=302)
MR = "1.2.840.10008.5.1.4.1.1.4"


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recheck_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("recheck-pacs")) as server:
        yield server


def _push_jobs(server: Server, item_id: int) -> list[int]:
    from dicomproxy.push.queue import push_attempts

    with server.ctx.journal.engine.connect() as conn:
        return [
            int(r[0])
            for r in conn.execute(
                push_attempts.select()
                .with_only_columns(push_attempts.c.job_id)
                .where(push_attempts.c.item_id == item_id)
            )
        ]


def _sent_by(server: Server, job_id: int) -> list[str]:
    with server.ctx.journal.engine.connect() as conn:
        q = job_instances.select().with_only_columns(job_instances.c.sop_instance_uid)
        return [str(r[0]) for r in conn.execute(q.where(job_instances.c.job_id == job_id))]


def test_late_images_are_sent_by_a_recheck_once_and_an_unchanged_study_is_not_sent_again(
    tmp_path: Path,
    make_config: ConfigFactory,
    recheck_pacs: Orthanc,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The RIS says the exam is finished when the first series is in the PACS: it is delivered;
    the second series reaches the PACS minutes later (here: a moment later) and the next re-check
    sends exactly it. The other study's count never grows: its re-checks make no job."""
    files = write_study(GROW, tmp_path / "grow")
    first = [p for p in files if p.stem in {GROW.sop_uid(0, i) for i in range(2)}]
    late = [p for p in files if p not in first]
    recheck_pacs.upload(first)
    recheck_pacs.upload(write_study(STILL, tmp_path / "still"))
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    caplog.set_level(logging.INFO, logger="dicomproxy")
    try:
        config = _config(
            make_config, view_url, recheck_pacs, scp, start_from="beginning", recheck_after=0.5, rechecks=2
        )
        server = run_proxy(config)
        queue = PushQueue(server.ctx.journal.engine, "test")
        insert_rows(engine, [exam_row(s, RowTimestamp=dt.datetime.now()) for s in (GROW, STILL)])
        first_sops = {GROW.sop_uid(0, i) for i in range(2)}
        wait_until(lambda: first_sops | study_sops(STILL) <= set(delivered(scp)), 30, "first delivery")
        recheck_pacs.upload(late)  # the late series reaches the PACS after the delivery
        items = {i["study_uid"]: i["id"] for i in queue.items()}
        grow_id, still_id = items[GROW.study_uid], items[STILL.study_uid]

        def settled() -> bool:  # both delivered, every re-check used up
            rows = [queue.get(grow_id), queue.get(still_id)]
            return all(r is not None and (r["state"], r["rechecks"]) == (DONE, 0) for r in rows)

        wait_until(settled, 30, "re-checks done")
        counts = delivered(scp)
        assert set(counts) == study_sops(GROW) | study_sops(STILL)
        assert max(counts.values()) == 1, counts  # nothing arrived twice
        grow_jobs, still_jobs = _push_jobs(server, grow_id), _push_jobs(server, still_id)
        assert len(grow_jobs) == 2 and len(still_jobs) == 1  # no job for an unchanged count
        assert sorted(_sent_by(server, max(grow_jobs))) == sorted(study_sops(GROW) - first_sops)
        assert _row(queue, grow_id)["confirmed"] == GROW.instance_count
        assert (
            f"push item {still_id}: re-check 1: the PACS holds 2 instance(s), 2 confirmed: nothing new"
            in (caplog.text)
        )
        assert f"push item {still_id}: re-check 2: the PACS holds 2 instance(s)" in caplog.text
        assert f"push item {grow_id}: re-check" in caplog.text and "delivering the new" in caplog.text
    finally:
        scp.stop()
        engine.dispose()


SWAP = StudySpec("CT", accession="RC003", series=1, images_per_series=3, seed=303)


def test_a_recheck_notices_one_deleted_and_one_added_and_sends_only_the_added(
    tmp_path: Path,
    make_config: ConfigFactory,
    recheck_pacs: Orthanc,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 25: after the delivery, the PACS loses one image and gains another (the count is
    unchanged): a re-check by UID notices, and only the added image is sent."""
    files = {p.stem: p for p in write_study(SWAP, tmp_path / "swap")}
    uids = [SWAP.sop_uid(0, i) for i in range(3)]
    recheck_pacs.upload([files[uids[0]], files[uids[1]]])
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    caplog.set_level(logging.INFO, logger="dicomproxy")
    try:
        config = _config(
            make_config, view_url, recheck_pacs, scp, start_from="beginning", recheck_after=0.5, rechecks=3
        )
        server = run_proxy(config)
        queue = PushQueue(server.ctx.journal.engine, "test")
        insert_rows(engine, [exam_row(SWAP, RowTimestamp=dt.datetime.now())])
        wait_until(lambda: set(uids[:2]) <= set(delivered(scp)), 30, "the first delivery")
        (found,) = recheck_pacs.request("POST", "/tools/lookup", uids[0].encode())
        recheck_pacs.request("DELETE", f"/instances/{found['ID']}")
        recheck_pacs.upload([files[uids[2]]])
        (item_id,) = [i["id"] for i in queue.items() if i["study_uid"] == SWAP.study_uid]

        def settled() -> bool:
            row = queue.get(item_id)
            return row is not None and (row["state"], row["rechecks"]) == (DONE, 0)

        wait_until(settled, 30, "re-checks done")
        counts = delivered(scp)
        assert set(counts) == set(uids) and max(counts.values()) == 1, counts
        jobs = _push_jobs(server, item_id)
        assert len(jobs) == 2 and _sent_by(server, max(jobs)) == [uids[2]]
        assert (
            "the PACS holds 2 instance(s), 2 confirmed, 1 of them no longer in the PACS, 1 new" in caplog.text
        )
    finally:
        scp.stop()
        engine.dispose()


# --- the schedule and the config -----------------------------------------------------------------


def test_recheck_schedule_doubles_and_ends() -> None:
    push = PushConfig(recheck_after=600.0, rechecks=3)
    assert next_recheck(0, push) == (3, 600.0)  # a delivery starts the schedule
    assert next_recheck(3, push) == (2, 1200.0)  # after re-check 1 (or the delivery it started)
    assert next_recheck(2, push) == (1, 2400.0)
    assert next_recheck(1, push) == (0, 0.0)  # the last one used: none left
    assert next_recheck(7, push) == (3, 600.0)  # `rechecks` lowered since: capped
    assert next_recheck(0, PushConfig(recheck_after=0.0, rechecks=3)) == (0, 0.0)  # off
    assert next_recheck(2, PushConfig(recheck_after=0.0, rechecks=3)) == (0, 0.0)  # turned off: ends
    assert next_recheck(0, PushConfig(recheck_after=60.0, rechecks=0)) == (0, 0.0)
    default = PushConfig()
    assert (default.recheck_after, default.rechecks) == (600.0, 2)
    assert [next_recheck(n, default) for n in (0, 2, 1)] == [(2, 600.0), (1, 1200.0), (0, 0.0)]


@pytest.mark.parametrize(
    ("push", "key", "message"),
    [({"recheck_after": -1}, "push.recheck_after", ">= 0"),
     ({"recheck_after": "10m"}, "push.recheck_after", "must be a number"),
     ({"recheck_after": 8 * 86400}, "push.recheck_after", "at most 604800"),
     ({"rechecks": -1}, "push.rechecks", "between 0 and 10"),
     ({"rechecks": 11}, "push.rechecks", "between 0 and 10"),
     ({"rechecks": 1.5}, "push.rechecks", "must be an integer"),
     ({"rechecks": True}, "push.rechecks", "must be an integer")],
)  # fmt: skip
def test_recheck_config_errors_name_file_and_key(
    tmp_path: Path, push: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(base_config_dict(tmp_path, "sqlite:///v.db", push=push), "/etc/proxy.toml")
    assert key in str(err.value) and message in str(err.value) and "/etc/proxy.toml" in str(err.value)


def test_recheck_config_values(tmp_path: Path) -> None:
    config = parse_config(base_config_dict(tmp_path, "sqlite:///v.db"))
    assert (config.push.recheck_after, config.push.rechecks) == (600.0, 2)
    off = parse_config(base_config_dict(tmp_path, "sqlite:///v.db", push={"recheck_after": 0, "rechecks": 5}))
    assert (off.push.recheck_after, off.push.rechecks) == (0.0, 5)


# --- the queue (SQLite, PostgreSQL, MariaDB) ----------------------------------------------------


def _delivered(q: PushQueue, clock: Clock, study_uid: str, rechecks: int = 2, after: float = 600) -> int:
    """An item claimed and ended ``done`` with ``rechecks`` left, the first due ``after`` s later."""
    item_id = _enqueue(q, study_uid)
    item = q.claim(LEASE)
    assert item is not None and item.id == item_id and not item.recheck
    assert q.finish(item, DONE, next_at=clock() + dt.timedelta(seconds=after), rechecks=rechecks)
    return item_id


def test_a_delivered_item_is_claimed_again_only_when_its_recheck_is_due(
    nodes: Callable[[str], PushQueue], clock: Clock
) -> None:
    a, b = nodes("node-a"), nodes("node-b")
    item_id = _delivered(a, clock, "1.2.3.1")
    done_at = _row(a, item_id)["updated"]
    assert a.rechecks_pending() == {"CLOUD": (1, START + dt.timedelta(seconds=600))}
    clock.advance(599)
    assert b.claim(LEASE) is None  # not due yet
    clock.advance(2)
    assert b.claim(LEASE, held=["CLOUD"]) is None  # a held (down/paused) destination waits
    got = b.claim(LEASE)
    assert got is not None and (got.id, got.recheck, got.rechecks, got.attempts) == (item_id, True, 2, 1)
    row = _row(b, item_id)
    assert (row["state"], row["owner"], row["attempts"], row["rechecks"]) == (RUNNING, "node-b", 1, 2)
    assert row["updated"] == done_at  # a re-check is not a delivery (push status: last hour)
    assert a.claim(LEASE) is None  # one node at a time, like any claim
    # nothing new: done again, the next one scheduled, `updated` untouched
    assert b.finish(got, DONE, next_at=clock() + dt.timedelta(seconds=1200), rechecks=1, touch=False)
    row = _row(b, item_id)
    assert (row["state"], row["rechecks"], row["updated"], row["lease_until"]) == (DONE, 1, done_at, None)
    # the node running the last re-check dies: its lease expires, another node takes it over
    clock.advance(1201)
    last = a.claim(LEASE)
    assert last is not None and last.recheck and last.rechecks == 1
    clock.advance(LEASE + 1)
    taken = b.claim(LEASE)
    assert taken is not None and taken.id == item_id and taken.takeovers == 1
    assert not taken.recheck and taken.rechecks == 1  # run as a delivery (only the unconfirmed)
    assert b.finish(taken, DONE, rechecks=0)
    clock.advance(10 * 86400)
    assert a.claim(LEASE) is None and a.rechecks_pending() == {}  # none left: done for good


def test_row_change_retry_and_requeue_reset_the_recheck_schedule(
    nodes: Callable[[str], PushQueue], clock: Clock
) -> None:
    w = nodes("w")
    # a changed view row: queued again from scratch (its delivery starts a new schedule)
    changed = _delivered(w, clock, "1.2.3.2")
    _enqueue(w, "1.2.3.2", stamp="2")
    assert (_row(w, changed)["state"], _row(w, changed)["rechecks"]) == (QUEUED, 0)
    got = w.claim(LEASE)
    assert got is not None and got.id == changed and (got.recheck, got.rechecks) == (False, 0)
    assert w.finish(got, DONE, rechecks=2, next_at=clock() + dt.timedelta(seconds=600))
    # ... and while its re-check runs: queued again when the run ends, the re-checks dropped
    clock.advance(601)
    running = w.claim(LEASE)
    assert running is not None and running.recheck
    _enqueue(w, "1.2.3.2", stamp="3")
    assert w.finish(running, DONE, rechecks=1, touch=False)
    assert (_row(w, changed)["state"], _row(w, changed)["rechecks"]) == (QUEUED, 0)
    got = w.claim(LEASE)
    assert got is not None and got.id == changed and not got.recheck
    assert w.finish(got, WAITING, next_at=clock() + dt.timedelta(seconds=30))
    # `push retry` of a waiting item whose re-check had started a delivery: a fresh schedule later
    with w.engine.begin() as conn:
        conn.execute(text("UPDATE push_queue SET rechecks = 1 WHERE id = :i"), {"i": changed})
    assert w.retry(changed)
    assert (_row(w, changed)["state"], _row(w, changed)["rechecks"]) == (QUEUED, 0)
    got = w.claim(LEASE)
    assert got is not None and got.id == changed and (got.recheck, got.rechecks) == (False, 0)
    assert w.finish(got, DONE)
    # `push requeue`: sent in full, a new generation, a new schedule after it
    other = _delivered(w, clock, "1.2.3.3")
    assert w.requeue(START - dt.timedelta(days=1)) == 2
    row = _row(w, other)
    assert (row["state"], row["rechecks"], row["generation"]) == (QUEUED, 0, 1)


def test_an_existing_journal_gets_the_rechecks_column(journal: Journal, clock: Clock) -> None:
    """A journal of the previous release (``takeovers`` already there, no ``rechecks``): the column
    is added at start; the items it holds, delivered long ago, are never re-checked; nodes of
    that release keep inserting beside the new ones."""
    old = _old_push_queue(MetaData())
    old.append_column(Column("takeovers", Integer, nullable=False, default=0, server_default=text("0")))
    old.create(journal.engine)
    row = {"destination": "CLOUD", "attempts": 1, "next_at": START, "created": START, "updated": START}
    with journal.engine.begin() as conn:
        conn.execute(insert(old), [{**row, "study_uid": "1.2.3.4", "state": DONE}])
    q = PushQueue(journal.engine, "new-node")
    q.now = clock
    columns = {c["name"]: c for c in sa_inspect(journal.engine).get_columns("push_queue")}
    assert "rechecks" in columns and not columns["rechecks"]["nullable"]
    with journal.engine.begin() as conn:  # an old node, beside it, queues a study
        conn.execute(insert(old), [{**row, "study_uid": "1.2.3.5", "state": QUEUED, "attempts": 0}])
    assert {i["study_uid"]: i["rechecks"] for i in q.items()} == {"1.2.3.4": 0, "1.2.3.5": 0}
    clock.advance(86400)
    got = q.claim(LEASE)
    assert got is not None and got.study_uid == "1.2.3.5" and not got.recheck
    assert q.claim(LEASE) is None  # the old done item: no re-check
    assert migrate(journal.engine) == []


# --- the re-check's decision (stub archives, a real journal) ------------------------------------


class FakeArchive:
    """A PACS client's C-FIND side: the study's SOP Instance UIDs (empty: no such study), or an
    error. Its STUDY-level count says 0 (a re-check must not rely on it)."""

    def __init__(self, listed: list[str], down: bool = False) -> None:
        self.listed, self.down = listed, down
        self.asked: list[str] = []

    def study_summary(self, study_uid: str) -> StudySummary | None:
        self.asked.append("study")
        return StudySummary(0, [MR])

    def find_instances(self, key: RetrieveKey) -> list[InstanceRef]:
        self.asked.append("image")
        if self.down:
            raise PacsUnavailable("PACS ORTHANC: association refused")
        return [InstanceRef(key.study_uid, "1.9.1", uid, MR) for uid in self.listed]


class FakeRelay:
    """The relay as the service sees it: archives, a resolver, and ``push`` jobs that end as
    scripted in ``results`` ((outcome, status, SOP Instance UIDs confirmed), one per job)."""

    def __init__(self, archives: dict[str, Any], resolver: Any = None) -> None:
        self.archives = archives
        self.resolver = resolver
        self.journal: Journal | None = None
        self.results: list[tuple[JobOutcome, int, list[str]]] = []
        self.excluded: list[frozenset[str]] = []

    def push(
        self, study_uid: str, destination: str, *, exclude: frozenset[str], on_start: Any, **_: Any
    ) -> Iterator[RetrieveResponse]:
        assert self.journal is not None and self.results, "a re-check does not deliver by itself"
        outcome, status, sent = self.results.pop(0)
        self.excluded.append(exclude)
        job_id = self.journal.start(JobKind.PUSH, "DICOMPROXY", "", destination, "pacs")
        on_start(job_id)
        self.journal.update(job_id, study_uids=[study_uid])
        self.journal.add_instances(job_id, [InstanceRecord(uid, "sent", MR) for uid in sent])
        self.journal.finish(job_id, status=status, outcome=outcome)
        yield RetrieveResponse(status)


class FakeResolver:
    def __init__(self, refs: list[StudyRef]) -> None:
        self.refs = refs

    def resolve_studies(self, **keys: Any) -> list[StudyRef]:
        return [r for r in self.refs if r.uid in keys.get("study_uids", ())]


SENT = ["1.9.1.1", "1.9.1.2", "1.9.1.3"]


@pytest.fixture
def recheck_service(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., tuple[PushService, Item]]]:
    """``make(archive, ...)``: a service whose item was delivered (3 images and a report PDF
    confirmed, by a job that recorded ``job_archive``) and is now claimed for its first re-check."""
    journals: list[Journal] = []
    config = parse_config(
        base_config_dict(
            tmp_path,
            "sqlite:///v.db",
            peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}],
            push={"enabled": True, "destinations": ["CLOUD"], "recheck_after": 60, "rechecks": 2},
        ),
        str(tmp_path / "proxy.toml"),
    )

    def make(archive: Any, job_archive: str = "pacs", resolver: Any = None) -> tuple[PushService, Item]:
        journal = Journal(f"sqlite:///{tmp_path / f'journal-{len(journals)}.db'}", "test")
        journals.append(journal)
        relay = FakeRelay({"pacs": archive}, resolver)
        relay.journal = journal
        service = PushService(config, None, journal, relay)
        q = service.queue
        q.now = clock
        _enqueue(q, "1.2.3.9")
        item = q.claim(LEASE)
        assert item is not None
        job_id = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", job_archive)
        q.record_attempt(item, job_id)
        records = [InstanceRecord(uid, "sent", MR) for uid in SENT]
        journal.add_instances(job_id, [*records, InstanceRecord("1.9.2.1", "sent", str(ENCAPSULATED_PDF))])
        left, delay = next_recheck(0, config.push)
        assert q.finish(
            item, DONE, next_at=clock() + dt.timedelta(seconds=delay), rechecks=left, reports="sent"
        )
        clock.advance(delay + 1)
        again = q.claim(LEASE)
        assert again is not None and again.recheck and again.rechecks == 2
        return service, again

    yield make
    for journal in journals:
        journal.close()


def test_a_recheck_that_finds_nothing_new_makes_no_job(
    recheck_service: Callable[..., tuple[PushService, Item]], clock: Clock
) -> None:
    archive = FakeArchive(SENT)  # the 3 images; the report PDF is not in the PACS
    service, item = recheck_service(archive)
    jobs_before = len(service.journal.recent(10))
    assert service.rechecks.run(item) is False
    assert archive.asked == ["image"]  # one IMAGE-level C-FIND, nothing fetched
    row = _row(service.queue, item.id)
    assert (row["state"], row["rechecks"], row["lease_until"]) == (DONE, 1, None)
    assert row["next_at"] == clock() + dt.timedelta(seconds=120)  # twice the first gap
    assert len(service.journal.recent(10)) == jobs_before
    # the last one: none left afterwards
    clock.advance(121)
    last = service.queue.claim(LEASE)
    assert last is not None and last.recheck and last.rechecks == 1
    assert service.rechecks.run(last) is False
    assert _row(service.queue, item.id)["rechecks"] == 0
    clock.advance(86400)
    assert service.queue.claim(LEASE) is None


def test_rechecks_turned_off_end_without_asking(
    recheck_service: Callable[..., tuple[PushService, Item]],
) -> None:
    archive = FakeArchive([*SENT, "1.9.1.4"])
    service, item = recheck_service(archive)
    service.rechecks.push = dataclasses.replace(service.push, recheck_after=0.0)  # the config changed since
    assert service.rechecks.run(item) is False and archive.asked == []
    row = _row(service.queue, item.id)
    assert (row["state"], row["rechecks"]) == (DONE, 0)


def test_a_recheck_that_finds_a_new_instance_delivers(
    recheck_service: Callable[..., tuple[PushService, Item]],
) -> None:
    service, item = recheck_service(FakeArchive([*SENT, "1.9.1.4"]))
    assert service.rechecks.run(item) is True  # the caller (deliver) runs the delivery
    row = _row(service.queue, item.id)
    assert (row["state"], row["rechecks"]) == (RUNNING, 2)  # the delivery's end schedules the next


def test_a_recheck_delivery_that_fails_is_retried_and_the_schedule_goes_on(
    recheck_service: Callable[..., tuple[PushService, Item]], clock: Clock
) -> None:
    """The re-check found more; its delivery fails (waiting, backoff, attempts from 1); the retry
    that delivers uses up that re-check: one left, the gap doubled. Only the new instance goes."""
    clock.now = utcnow()  # the service's backoff is on the real clock
    service, item = recheck_service(FakeArchive([*SENT, "1.9.1.4"]))
    relay: FakeRelay = service.relay
    relay.results = [(JobOutcome.FAILED, 0xA702, []), (JobOutcome.SUCCESS, 0, ["1.9.1.4"])]
    service.deliver(item)
    row = _row(service.queue, item.id)
    assert (row["state"], row["rechecks"], row["attempts"]) == (WAITING, 2, 1)
    assert relay.excluded[0] == {*SENT, "1.9.2.1"}  # what the destination confirmed is not resent
    clock.advance(service.push.retry_delay + 1)
    retry = service.queue.claim(LEASE)
    assert retry is not None and retry.id == item.id and not retry.recheck and retry.rechecks == 2
    service.deliver(retry)  # a delivery (no re-check first): it went on failing otherwise
    row = _row(service.queue, item.id)
    assert (row["state"], row["rechecks"], row["confirmed"], row["reports"]) == (DONE, 1, 5, "none")
    assert row["next_at"] == clock() + dt.timedelta(seconds=120)
    assert relay.results == []


@pytest.mark.parametrize(
    ("listed", "new", "gone"),
    [
        (SENT, 0, 0),
        ([*SENT, "1.9.1.4"], 1, 0),
        (SENT[:2], 0, 1),  # one deleted at the PACS: the destination keeps it, nothing to send
        ([*SENT[:2], "1.9.1.4"], 1, 1),  # one deleted, one added: the same count, still new
        (["1.9.2.1"], 0, 3),  # our report object's UID listed by the PACS: confirmed, not new
    ],
)
def test_a_recheck_compares_uids_not_counts(
    recheck_service: Callable[..., tuple[PushService, Item]],
    caplog: pytest.LogCaptureFixture,
    listed: list[str],
    new: int,
    gone: int,
) -> None:
    """Issue 25: the re-check lists the study at IMAGE level and compares SOP Instance UIDs with
    what the destination confirmed; the log line counts the new and the ones gone from the PACS."""
    archive = FakeArchive(listed)
    service, item = recheck_service(archive)
    with caplog.at_level(logging.INFO, logger="dicomproxy.push"):
        assert service.rechecks.run(item) is bool(new)
    assert archive.asked == ["image"]
    line = f"push item {item.id}: re-check 1: the PACS holds {len(listed)} instance(s), 3 confirmed"
    line += f", {gone} of them no longer in the PACS" if gone else ""
    line += f", {new} new: delivering the new" if new else ": nothing new; next in 120 s"
    assert line in caplog.text


def test_a_study_gone_from_the_pacs_or_a_pacs_down_uses_up_the_recheck(
    recheck_service: Callable[..., tuple[PushService, Item]], caplog: pytest.LogCaptureFixture
) -> None:
    service, item = recheck_service(FakeArchive([]))  # no such study (any more)
    assert service.rechecks.run(item) is False
    assert _row(service.queue, item.id)["rechecks"] == 1
    down, item2 = recheck_service(FakeArchive(SENT, down=True))
    with caplog.at_level(logging.WARNING, logger="dicomproxy.push"):
        assert down.rechecks.run(item2) is False
    row = _row(down.queue, item2.id)
    assert (row["state"], row["rechecks"]) == (DONE, 1)  # bounded: the next one still comes
    assert (
        f"push item {item2.id}: re-check 1 could not be done (PACS ORTHANC: association refused)"
        in caplog.text
    )


def test_the_archive_asked_is_the_one_that_served_else_the_routed_one(
    recheck_service: Callable[..., tuple[PushService, Item]],
) -> None:
    routed = FakeArchive([*SENT, "1.9.1.4"])
    resolver = FakeResolver([StudyRef("1.2.3.9")])  # [pacs] without sysids serves any row
    service, item = recheck_service(routed, job_archive="", resolver=resolver)
    assert service.rechecks.run(item) is True and routed.asked == ["image"]
    # not visible any more (or no resolver): the delivery decides (it drops the item)
    gone, item2 = recheck_service(FakeArchive(SENT), job_archive="", resolver=FakeResolver([]))
    assert gone.rechecks.run(item2) is True


# --- push status ----------------------------------------------------------------------------------


def test_push_status_shows_rechecks_and_takeovers(tmp_path: Path) -> None:
    toml = push_cli_toml(tmp_path)
    journal = Journal.for_config("", tmp_path / "var")
    try:
        q = PushQueue(journal.engine, "node")
        due = dt.datetime(2030, 1, 2, 3, 4, 5)
        with q.engine.begin() as conn:
            q.enqueue(conn, [Entry(f"1.2.3.{i}", "CLOUD", f"EX-{i}", "1") for i in range(3)])
            conn.execute(
                text("UPDATE push_queue SET state = 'done', rechecks = 2, next_at = :d WHERE id = 1"),
                {"d": due},
            )
            conn.execute(text("UPDATE push_queue SET state = 'done' WHERE id = 2"))
            conn.execute(text("UPDATE push_queue SET takeovers = 2 WHERE id = 3"))
        run = CliRunner().invoke
        out = run(cli, ["push", "-c", str(toml), "status"])
        assert out.exit_code == 0, out.output
        line = next(x for x in out.output.splitlines() if x.startswith("CLOUD"))
        assert line.split()[1:9] == [
            "1",
            "0",
            "0",
            "0",
            "2",
            "0",
            "0",
            "1",
        ]  # ... committing done failed dropped re-check
        assert "next re-check 2030-01-02T03:04:05 UTC" in line
        lines = {x.split()[0]: x for x in out.output.splitlines()[4:] if x.strip()}
        assert "[re-check 2030-01-02T03:04:05 UTC (2 left)]" in lines["1"]
        assert "[takeovers 2]" in lines["3"] and "re-check" not in lines["3"]
        assert "[" not in lines["2"]
        out = run(cli, ["push", "-c", str(toml), "status", "--json"])
        report = json.loads(out.output)
        assert report["destinations"]["CLOUD"]["rechecks"] == {"pending": 1, "next": "2030-01-02T03:04:05"}
        assert {i["id"]: (i["rechecks"], i["takeovers"]) for i in report["recent"]} == {
            1: (2, 0),
            2: (0, 0),
            3: (0, 2),
        }
    finally:
        journal.close()


def test_push_status_shows_storage_commitment(tmp_path: Path) -> None:
    """A push destination asked to commit (docs/commitment.md): its last 24 h of references by state."""
    from dicomproxy.config import load_config
    from dicomproxy.relay.commitments import CommitmentLedger
    from dicomproxy.transport.commitment import Report

    toml = push_cli_toml(tmp_path)
    toml.write_text(
        toml.read_text().replace("port = 1\n[push]", "port = 1\nstorage_commitment = true\n[push]")
    )
    journal = Journal.for_config("", tmp_path / "var")
    try:
        ledger = CommitmentLedger(load_config(toml), journal)
        job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
        journal.add_instances(job, [InstanceRecord(u, "sent", MR) for u in ("2.25.1", "2.25.2", "2.25.3")])
        (tx,) = ledger.job_ended(job)
        assert ledger.answer(Report(tx, frozenset({"2.25.1", "2.25.2"}), {"2.25.3": 0x0110}))
        out = CliRunner().invoke(cli, ["push", "-c", str(toml), "status"])
        assert out.exit_code == 0, out.output
        assert (
            "storage commitment, last 24 h, CLOUD: pending=0 committed=2 failed=1 unanswered=0" in out.output
        )
        out = CliRunner().invoke(cli, ["push", "-c", str(toml), "status", "--json"])
        assert json.loads(out.output)["destinations"]["CLOUD"]["commitment_24h"] == {
            "pending": 0,
            "committed": 2,
            "failed": 1,
            "unanswered": 0,
        }
    finally:
        journal.close()


def test_the_archive_asked_is_the_newest_job_s_of_the_generation(tmp_path: Path) -> None:
    """``PushQueue.archive``: the newest job of the item's generation that recorded an archive (a
    job refused before routing records none)."""
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    try:
        q = PushQueue(journal.engine, "n")
        _enqueue(q, "1.2.3.1")
        item = q.claim(LEASE)
        assert item is not None and q.archive(item.id, 0) == ""
        for archive in ("ris", "uis", ""):
            q.record_attempt(item, journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", archive))
        assert q.archive(item.id, 0) == "uis" and q.archive(item.id, 1) == ""
    finally:
        journal.close()


def test_confirmed_images_count_a_scanned_document_the_pacs_holds_but_not_our_report_objects(
    tmp_path: Path,
) -> None:
    """``PushQueue.confirmed_images`` (what the PACS's count is compared with): the images, and an
    Encapsulated PDF the PACS listed for the job (a scanned document stored there), not the
    report objects made from the view's files, nor anything refused."""
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    try:
        q = PushQueue(journal.engine, "n")
        _enqueue(q, "1.2.3.1")
        item = q.claim(LEASE)
        assert item is not None
        job_id = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
        q.record_attempt(item, job_id)
        pdf = str(ENCAPSULATED_PDF)
        journal.add_expected(
            job_id,
            [
                {"study_uid": "1.2.3.1", "series_uid": "1.2.3.1.1", "sop_instance_uid": u, "sop_class_uid": c}
                for u, c in (("1.9.1.1", MR), ("1.9.1.2", MR), ("1.9.1.3", pdf))
            ],
        )
        journal.add_instances(
            job_id,
            [
                InstanceRecord("1.9.1.1", "sent", MR),
                InstanceRecord("1.9.1.2", "failed", MR),
                InstanceRecord("1.9.1.3", "sent", pdf),  # the PACS's scanned document
                InstanceRecord("1.9.2.1", "sent", pdf),  # our report object
            ],
        )
        assert q.confirmed(item.id, 0) == {"1.9.1.1", "1.9.1.3", "1.9.2.1"}
        assert q.confirmed_images(item.id, 0) == {"1.9.1.1", "1.9.1.3"}
        assert q.confirmed(item.id, 1) == frozenset()  # another generation: nothing confirmed yet
    finally:
        journal.close()
