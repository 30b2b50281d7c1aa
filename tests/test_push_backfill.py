"""The backfill lane (issue 27 item 3): ``push backfill`` queues historical visible exams in a lane
of their own; only the backfill workers claim them, so a live exam never waits behind history.

Real peers end to end: Orthanc as the PACS holding ten historical studies and a live one, DCMTK
storescp as the destination (``+uf``: duplicates show), a SQLite exam view, a real ``Server`` with
push on, ``dicomproxy push backfill`` run by its CLI against the same journal. Then the pieces
without peers: what is queued (order, filters, pairs already queued), the claim's lanes, progress.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine

from dicomproxy.cli import cli
from dicomproxy.config import PushConfig, load_config
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.push.backfill import lane_progress, queue_backfill
from dicomproxy.push.queue import BACKFILL, DONE, LIVE, PushQueue
from dicomproxy.relay.journal import Journal
from dicomproxy.server import Server
from dicomproxy.view.repository import ExamStudy
from testkit import wait_until
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import running_orthanc
from tests.test_push import delivered
from tests.test_push_takeover import _enqueue
from tests.test_reconcile import write_config

HISTORY = [
    StudySpec(
        "CT",
        accession=f"BF{i:03d}",
        series=1,
        images_per_series=1,
        seed=700 + i,
        study_date=f"202401{i + 10:02d}",
    )
    for i in range(10)
]
LIVE_SPEC = StudySpec(
    "CT", accession="BFLIVE", series=1, images_per_series=1, seed=799, study_date="20240131"
)


def history_view(tmp_path: Path, specs: list[StudySpec], age: dt.timedelta, step: dt.timedelta) -> Engine:
    """The SQLite exam view ``tmp_path/view.db``, one row per study of ``specs`` stamped ``age`` ago
    and ``step`` apart: below push's start ("now"), never live."""
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(view)
    long_ago = dt.datetime.now() - age
    insert_rows(view, [exam_row(s, RowTimestamp=long_ago + i * step) for i, s in enumerate(specs)])
    return view


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("bf-pacs"), [*HISTORY, LIVE_SPEC]) as server:
        yield server


def test_history_goes_by_its_own_workers_and_a_live_exam_never_waits_for_it(
    tmp_path: Path, pacs: Orthanc, run_proxy: Callable[..., Server]
) -> None:
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    view = history_view(tmp_path, HISTORY, dt.timedelta(days=300), dt.timedelta(minutes=1))
    try:
        config_path = write_config(
            tmp_path, pacs, ("STORESCP", scp.port), push_extra="backfill_concurrent = 1"
        )
        server = run_proxy(load_config(config_path))
        queue = PushQueue(server.ctx.journal.engine, "test")
        run = CliRunner().invoke
        # the lane paused first: what follows shows which workers take what
        assert run(cli, ["push", "-c", str(config_path), "pause", "--lane", "backfill"]).exit_code == 0
        out = run(
            cli, ["push", "-c", str(config_path), "backfill", "--from", "2024-01-01", "--to", "2024-01-31"]
        )
        assert out.exit_code == 0, out.output
        assert (
            "10 visible exam(s) from 2024-01-01 to 2024-01-31; 10 item(s) queued for STORESCP" in out.output
        )
        insert_rows(view, [exam_row(LIVE_SPEC, RowTimestamp=dt.datetime.now())])  # a live exam arrives
        wait_until(lambda: LIVE_SPEC.sop_uid(0, 0) in delivered(scp), 30, "the live exam delivered")
        assert set(delivered(scp)) == {LIVE_SPEC.sop_uid(0, 0)}  # no live worker took history
        status = run(cli, ["push", "-c", str(config_path), "status", "--json"]).output
        assert '"lane": "backfill"' in status and '"paused": true' in status
        text = run(cli, ["push", "-c", str(config_path), "status"]).output
        assert "backfill (paused): 0 done, 10 left, 0 failed; 0 in the last hour" in text
        # resumed: the backfill worker delivers every historical study, once
        assert run(cli, ["push", "-c", str(config_path), "resume", "--lane", "backfill"]).exit_code == 0
        wanted = {s.sop_uid(0, 0) for s in HISTORY}
        wait_until(lambda: wanted <= set(delivered(scp)), 60, "the history delivered")
        wait_until(lambda: all(i["state"] == DONE for i in queue.items(limit=20)), 30, "every item done")
        assert Counter(delivered(scp)) == Counter({u: 1 for u in [*wanted, LIVE_SPEC.sop_uid(0, 0)]})
        (live, backfill) = lane_progress(queue)
        assert (live.counts, backfill.counts) == ({DONE: 1}, {DONE: 10})
        assert backfill.last_hour == 10 and backfill.eta_seconds == 0.0
        # asked again: every pair is queued already (any lane), nothing new
        out = run(cli, ["push", "-c", str(config_path), "backfill", "--from", "2024-01-01"])
        assert "0 item(s) queued for STORESCP, 11 already queued" in out.output, out.output
    finally:
        scp.stop()
        view.dispose()


# --- without peers ---------------------------------------------------------------------------------


def _study(uid: str, sysid: str = "RIS", modality: str = "CT") -> ExamStudy:
    return ExamStudy(StudyRef(uid, sysid, modality), f"E{uid}", "", None)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[PushQueue]:
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    yield PushQueue(journal.engine, "n")
    journal.close()


@pytest.mark.parametrize("newest_first", [False, True])
def test_backfill_items_are_due_at_once_in_the_chosen_order(queue: PushQueue, newest_first: bool) -> None:
    studies = [_study(f"1.2.{i}") for i in range(5)]  # oldest first, as the view lists them
    done = queue_backfill(queue, studies, ["CLOUD"], PushConfig(), newest_first)
    assert (done.studies, done.queued, done.present) == (5, 5, 0)
    order = []
    while (item := queue.claim(60.0, lane=BACKFILL)) is not None:
        order.append(item.study_uid)
        assert item.lane == BACKFILL and item.files
    expected = [s.ref.uid for s in studies]
    assert order == (expected[::-1] if newest_first else expected)


def test_live_workers_never_claim_backfill_items_nor_backfill_workers_live_ones(queue: PushQueue) -> None:
    queue_backfill(queue, [_study("1.2.1")], ["CLOUD"], PushConfig())
    assert queue.claim(60.0) is None  # the live lane (default) is empty
    _enqueue(queue, "1.2.9")
    live = queue.claim(60.0, lane=LIVE)
    assert live is not None and (live.study_uid, live.lane) == ("1.2.9", LIVE)
    history = queue.claim(60.0, lane=BACKFILL)
    assert history is not None and (history.study_uid, history.lane) == ("1.2.1", BACKFILL)
    assert queue.claim(60.0, lane=BACKFILL) is None and queue.claim(60.0, lane=LIVE) is None


def test_backfill_leaves_queued_pairs_and_applies_the_push_filters(queue: PushQueue) -> None:
    _enqueue(queue, "1.2.1")  # the watcher queued it (for CLOUD)
    push = dataclasses.replace(PushConfig(), sysids=("RIS",), modalities=("CT", "MR"))
    studies = [_study("1.2.1"), _study("1.2.2"), _study("1.2.3", sysid="UIS"), _study("1.2.4", modality="XA")]
    done = queue_backfill(queue, studies, ["CLOUD", "OTHER"], push)
    assert (done.studies, done.queued, done.present) == (2, 3, 1)  # 1.2.1→OTHER, 1.2.2→both
    assert sorted((i["study_uid"], i["destination"]) for i in queue.items(limit=10)) == [
        ("1.2.1", "CLOUD"),
        ("1.2.1", "OTHER"),
        ("1.2.2", "CLOUD"),
        ("1.2.2", "OTHER"),
    ]


def test_lane_progress_counts_and_estimates(queue: PushQueue) -> None:
    queue_backfill(queue, [_study(f"1.2.{i}") for i in range(4)], ["CLOUD"], PushConfig())
    now = queue.now()
    live, backfill = lane_progress(queue, now)
    assert (live.counts, backfill.counts, backfill.left, backfill.eta_seconds) == ({}, {"queued": 4}, 4, None)
    item = queue.claim(60.0, lane=BACKFILL)
    assert item is not None and queue.finish(item, DONE)
    _, backfill = lane_progress(queue, now)
    assert (backfill.left, backfill.last_hour, backfill.eta_seconds) == (3, 1, 3 * 3600.0)
    assert backfill.as_dict()["done"] == 1
    _, later = lane_progress(queue, now + dt.timedelta(hours=2))
    assert later.last_hour == 0 and later.eta_seconds is None


def test_the_backfill_waits_while_a_live_item_is_due_or_running(queue: PushQueue) -> None:
    queue_backfill(queue, [_study("1.2.1")], ["CLOUD"], PushConfig())
    assert not queue.live_busy(queue.now())  # history only
    _enqueue(queue, "1.2.9")
    now = queue.now()
    assert queue.live_busy(now)  # a live item due
    live = queue.claim(60.0)
    assert live is not None and queue.live_busy(now)  # running
    assert queue.finish(live, "waiting", next_at=now + dt.timedelta(minutes=5))
    assert not queue.live_busy(now)  # waiting for later: not holding history back
    assert queue.live_busy(now + dt.timedelta(minutes=6))
