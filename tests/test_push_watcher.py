"""The push watcher on real databases (SQLite, PostgreSQL, MariaDB) and both RowTimestamp kinds
(emulated rowversion with its ``min_active_rowversion()`` guard, and a date-time): only visible
rows in the configured states are queued, once per (study, destination); an unchanged re-read is
not queued again, a changed row is; a transaction that commits late is not lost; the watermark is
in the journal and a new process goes on from it; ``start_from = "now"`` skips what is there."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomproxy.config import Config
from dicomproxy.push.queue import WATERMARK, PushQueue, push_queue
from dicomproxy.push.watcher import Watcher
from dicomproxy.relay.journal import Journal
from dicomproxy.view.repository import ExamView
from dicomproxy.view.stamp import Mark
from testkit.viewdb import insert_rows, update_rows, writer
from tests import test_view_rowstamp
from tests.conftest import FIND_PEERS, ConfigFactory
from tests.test_view_rowstamp import BASE, StampedView
from tests.view_data import UID

#: The view of test_view_rowstamp: every database × both RowTimestamp kinds.
stamped = test_view_rowstamp.stamped

PEERS = [*FIND_PEERS, {"ae_title": "CLOUD2", "host": "127.0.0.1", "port": 1}]


def _config(stamped: StampedView, make_config: ConfigFactory, **push: Any) -> Config:
    return make_config(
        view={"url": stamped.url, "name": stamped.name.upper()},
        peers=PEERS,
        push={"enabled": True, "destinations": ["jobserver", "CLOUD2"], "start_from": "beginning", **push},
    )


def _items(queue: PushQueue) -> dict[tuple[str, str], dict[str, Any]]:
    with queue.engine.connect() as conn:
        return {(r.study_uid, r.destination): dict(r._mapping) for r in conn.execute(select(push_queue))}


class Node:
    """One process's view of the view and the journal (a new one = a restart)."""

    def __init__(self, config: Config, journal_url: str) -> None:
        self.view = ExamView(config)
        self.journal = Journal(journal_url)
        self.queue = PushQueue(self.journal.engine, "test-node")
        self.watcher = Watcher(config, self.view, self.queue)

    def close(self) -> None:
        self.view.close()
        self.journal.close()


def test_watcher_queues_visible_rows_once_and_changed_rows_again(
    stamped: StampedView, make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = _config(stamped, make_config, batch_size=3)  # several batches: keyset paging
    journal_url = f"sqlite:///{tmp_path / 'journal.db'}"
    node = Node(config, journal_url)
    try:
        assert node.watcher.run_pass()
        items = _items(node.queue)
        uids = {u for u, _ in items}
        # visible rows only: other hospital, privacy, no/invalid UID never queued
        assert UID["m1"] in uids and UID["m2"] in uids and UID["m3"] in uids and UID["null"] in uids
        assert not {UID["oh"], UID["priv"]} & uids
        assert all((u, d) in items for u in uids for d in ("jobserver", "CLOUD2"))  # one per destination
        first = len(items)

        assert node.watcher.run_pass() == 0  # re-read (overlap / guard): nothing queued again
        assert len(_items(node.queue)) == first

        # a registered-only exam is not queued; once examined (new stamp) it is
        row = stamped.row("EPUSH1", "1.2.840.880.1", BASE + dt.timedelta(hours=2), State="登记完成")
        insert_rows(stamped.engine, [row], stamped.name)
        node.watcher.run_pass()
        assert ("1.2.840.880.1", "jobserver") not in _items(node.queue)
        update_rows(
            stamped.engine,
            stamped.name,
            "EPUSH1",
            {"State": "检查完成", "RowTimestamp": BASE + dt.timedelta(hours=3)},
        )
        assert node.watcher.run_pass() == 2
        item = _items(node.queue)[("1.2.840.880.1", "jobserver")]
        assert item["state"] == "queued" and item["examine_id"] == "EPUSH1"

        # delivered, then the row changes (report written): queued again
        with node.queue.engine.begin() as conn:
            conn.execute(push_queue.update().values(state="done"))
        update_rows(
            stamped.engine,
            stamped.name,
            "EPUSH1",
            {"State": "审核完成", "RowTimestamp": BASE + dt.timedelta(hours=4)},
        )
        assert node.watcher.run_pass() == 2
        states = {k: v["state"] for k, v in _items(node.queue).items()}
        assert states[("1.2.840.880.1", "jobserver")] == "queued"
        assert states[(UID["m1"], "jobserver")] == "done"  # unchanged rows stay delivered
        mark = Mark.decode(node.queue.get_state(WATERMARK) or "")
        assert mark is not None and mark.kind.value == stamped.kind
    finally:
        node.close()

    # a new process goes on from the stored watermark
    node = Node(config, journal_url)
    try:
        insert_rows(
            stamped.engine,
            [stamped.row("EPUSH2", "1.2.840.880.2", BASE + dt.timedelta(hours=5))],
            stamped.name,
        )
        assert node.watcher.run_pass() == 2
        assert ("1.2.840.880.2", "CLOUD2") in _items(node.queue)
    finally:
        node.close()


def test_late_commit_is_queued(stamped: StampedView, make_config: ConfigFactory, tmp_path: Path) -> None:
    """A row whose stamp was taken before a committed one but that commits later is queued."""
    if stamped.db == "sqlite" and stamped.kind == "rowversion":
        pytest.skip("SQLite has one writer: stamps follow commit order, a late commit cannot happen")
    node = Node(_config(stamped, make_config), f"sqlite:///{tmp_path / 'journal.db'}")
    late = stamped.row("ELATE", "1.2.840.881.1", BASE + dt.timedelta(hours=6))
    early = stamped.row("EEARLY", "1.2.840.881.2", BASE + dt.timedelta(hours=6, seconds=1))
    try:
        node.watcher.run_pass()
        if stamped.db == "sqlite":  # one writer: a lower date-time stamp that appears later
            insert_rows(stamped.engine, [early], stamped.name)
            node.watcher.run_pass()
            insert_rows(stamped.engine, [late], stamped.name)
        else:
            with writer(stamped.engine) as slow:
                insert_rows(stamped.engine, [late], stamped.name, conn=slow)  # stamp taken, not committed
                insert_rows(stamped.engine, [early], stamped.name)
                node.watcher.run_pass()
                assert ("1.2.840.881.2", "jobserver") in _items(node.queue)
                assert ("1.2.840.881.1", "jobserver") not in _items(node.queue)
        node.watcher.run_pass()
        assert ("1.2.840.881.1", "jobserver") in _items(node.queue)
    finally:
        node.close()


def test_start_from_now_skips_existing_rows(
    stamped: StampedView, make_config: ConfigFactory, tmp_path: Path
) -> None:
    node = Node(_config(stamped, make_config, start_from="now"), f"sqlite:///{tmp_path / 'journal.db'}")
    try:
        assert node.watcher.run_pass() == 0
        insert_rows(
            stamped.engine,
            [stamped.row("ENOW1", "1.2.840.882.1", BASE + dt.timedelta(days=30))],
            stamped.name,
        )
        assert node.watcher.run_pass() == 2
        assert {u for u, _ in _items(node.queue)} == {"1.2.840.882.1"}
    finally:
        node.close()
