"""The backfill lane under a backlog (issue 27 item 3): live exams that arrive while a few hundred
historical studies are queued go first, and every historical study is delivered exactly once.

Real peers: Orthanc as the PACS (200 historical studies and three live ones, each one small real CT
slice, loaded as ZIP archives), a pynetdicom storage SCP as the destination, a real ``Server`` with
push on (``backfill_concurrent = 2``), ``dicomproxy push backfill`` by its CLI. Ordering, not timing:

- each live instance reaches the destination while most of the backlog is still queued (a live
  worker that claimed history, or history claimed before a live item, puts it behind the backlog);
- while a live instance's C-STORE is held at the destination (HOLD s), at most the
  ``backfill_concurrent`` historical deliveries already under way when it was queued arrive — the
  backfill workers claim nothing while a live item is due or running (``PushQueue.live_busy``);
- at the end, per SOP Instance UID, every study once: none missing, none twice, nothing else.

Then two ``dicomproxy serve`` processes on one PostgreSQL journal share the lane: a backlog queued
once is delivered by both nodes' backfill workers, every study exactly once.

Speed is measured in benchmarks/bench_backfill.py (2,000 studies), not here.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner
from pynetdicom import evt
from sqlalchemy import create_engine, select

from dicomproxy.cli import cli
from dicomproxy.config import load_config
from dicomproxy.push.backfill import lane_progress
from dicomproxy.push.queue import BACKFILL, DONE, PushQueue, push_queue
from dicomproxy.server import Server
from testkit import wait_until
from testkit.bulk import upload_studies
from testkit.fakepacs import FakeDestination
from testkit.nodes import ServeNodes, peer
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import insert_rows
from tests.conftest import running_orthanc
from tests.test_push_backfill import history_view
from tests.test_reconcile import write_config

pytestmark = [pytest.mark.slow, pytest.mark.orthanc]

BACKLOG = [
    StudySpec(
        "CT", accession=f"BL{i:04d}", series=1, images_per_series=1, seed=4000 + i, study_date="20230615"
    )
    for i in range(200)
]
LIVE = [
    StudySpec(
        "CT", accession=f"BLLIVE{i}", series=1, images_per_series=1, seed=4900 + i, study_date="20241201"
    )
    for i in range(3)
]
BACKFILL_CONCURRENT = 2
#: Seconds the destination holds each live instance's C-STORE: long enough for several historical
#: deliveries, were the backfill workers not waiting.
HOLD = 1.5


class SlowForLive(FakeDestination):
    """Holds each live instance's C-STORE ``HOLD`` s and notes what arrived meanwhile."""

    def __init__(self, live: set[str]) -> None:
        super().__init__("CLOUD")
        self.live = live
        self.during: dict[str, list[str]] = {}

    def _store(self, event: evt.Event) -> int:
        uid = str(cast(Any, event.request).AffectedSOPInstanceUID)
        if uid in self.live:
            before = len(self.received)
            time.sleep(HOLD)  # a slow destination, not a wait for the proxy
            self.during[uid] = [u for u, _ in self.received[before:]]
        return super()._store(event)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("backlog-pacs")) as server:
        upload_studies(server, [*BACKLOG, *LIVE], size=32)
        yield server


def test_live_exams_go_before_a_backlog_of_200_and_every_study_arrives_once(
    tmp_path: Path, pacs: Orthanc, run_proxy: Callable[..., Server]
) -> None:
    history = [s.sop_uid(0, 0) for s in BACKLOG]
    live = [s.sop_uid(0, 0) for s in LIVE]
    dest = SlowForLive(set(live)).start()
    view = history_view(tmp_path, BACKLOG, dt.timedelta(days=500), dt.timedelta(seconds=1))
    try:
        config_path = write_config(
            tmp_path, pacs, ("CLOUD", dest.port), push_extra=f"backfill_concurrent = {BACKFILL_CONCURRENT}"
        )
        server = run_proxy(load_config(config_path))
        queue = PushQueue(server.ctx.journal.engine, "test")
        out = CliRunner().invoke(
            cli, ["push", "-c", str(config_path), "backfill", "--from", "2023-01-01", "--to", "2023-12-31"]
        )
        assert out.exit_code == 0 and "200 item(s) queued for CLOUD" in out.output, out.output

        def arrived() -> list[str]:
            return [u for u, _ in dest.received]

        wait_until(lambda: len(arrived()) >= 10, 60, "the backlog under way")
        ahead: dict[str, int] = {}  # per live exam: historical studies delivered before it
        for spec, uid in zip(LIVE, live, strict=True):
            insert_rows(view, [exam_row(spec, RowTimestamp=dt.datetime.now())])
            wait_until(lambda u=uid: u in arrived(), 60, f"live exam {spec.accession} delivered")  # type: ignore[misc]
            order = arrived()
            ahead[uid] = len(set(order[: order.index(uid)]) & set(history))
        wait_until(lambda: set(history) <= set(arrived()), 240, "the backlog drained")
        wait_until(
            lambda: all(p.left == 0 for p in lane_progress(queue)), 30, "every item finished in both lanes"
        )

        # live first: each live exam arrived with most of the backlog still queued ...
        assert all(n < len(BACKLOG) // 2 for n in ahead.values()), ahead
        # ... and while it was being stored, only the historical deliveries already under way arrived
        backfill_meanwhile = {u: len(set(dest.during[u]) & set(history)) for u in live}
        assert all(n <= BACKFILL_CONCURRENT for n in backfill_meanwhile.values()), backfill_meanwhile
        # every study exactly once, nothing else
        assert Counter(arrived()) == Counter({u: 1 for u in [*history, *live]})
        progress = {p.lane: p.counts for p in lane_progress(queue)}
        assert progress == {"live": {DONE: 3}, BACKFILL: {DONE: 200}}
    finally:
        dest.stop()
        view.dispose()


@pytest.mark.postgresql
def test_two_nodes_share_the_backfill_lane_every_study_once(
    tmp_path: Path, pacs: Orthanc, pg_journal: str
) -> None:
    backlog = BACKLOG[:60]
    history = [s.sop_uid(0, 0) for s in backlog]
    dest = FakeDestination("CLOUD").start()
    view = history_view(tmp_path, backlog, dt.timedelta(days=500), dt.timedelta(seconds=1))
    journal = create_engine(pg_journal)
    rig = ServeNodes(
        tmp_path, pg_journal, pacs.remote, [peer(dest.remote)], calling="CLOUD", timeout=60,
        journal={"resume_window": 0},
        push={"enabled": True, "destinations": [dest.ae_title], "start_from": "now", "poll_interval": 0.3,
              "retry_delay": 0.3, "max_retry_delay": 1.0, "recheck_after": 0, "max_concurrent": 1,
              "backfill_concurrent": 1},
    )  # fmt: skip
    try:
        nodes = rig.start()
        out = CliRunner().invoke(
            cli, ["push", "-c", str(nodes[0].toml), "backfill", "--from", "2023-01-01", "--to", "2023-12-31"]
        )
        assert out.exit_code == 0 and "60 item(s) queued for CLOUD" in out.output, out.output

        def finished() -> list[tuple[str, str]]:
            with journal.connect() as conn:
                q = select(push_queue.c.owner, push_queue.c.state).where(push_queue.c.lane == BACKFILL)
                return [(str(o), str(s)) for o, s in conn.execute(q)]

        wait_until(
            lambda: len(finished()) == 60 and all(s == DONE for _, s in finished()),
            240,
            "the backlog delivered",
        )
        owners = Counter(o.split(":")[1] for o, _ in finished())  # host:pid:AE — by process
        assert set(owners) == {str(n.process.proc.pid) for n in nodes}, owners  # both nodes took a share
        assert Counter(u for u, _ in dest.received) == Counter({u: 1 for u in history})
    finally:
        rig.stop()
        dest.stop()
        view.dispose()
        journal.dispose()
