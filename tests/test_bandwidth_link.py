"""The bandwidth timetable on a shaped link (issue 27 item 2): the cloud's storescp in a network
namespace behind a veth pair shaped with ``tc tbf`` at 100 Mbit/s (testkit.netns), the rate
measured on the link itself (the veth's transmit counter, between 10 % and 90 % of the bytes).
A ``[[bandwidth]]`` rule of 30 Mbit/s holds what leaves within 10 %; without a cap the same C-MOVE
fills the link (so the link could show more); two ``serve`` processes on one PostgreSQL journal
moving at the same time stay within the rule together. ``tests/test_bandwidth_real.py`` has the
loopback cases (rule changes, pynetdicom's sender, push)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from dicomproxy.server import Server
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakePacs
from testkit.netns import RateProbe, ShapedLink
from testkit.samples import exam_row
from testkit.viewdb import create_view_table, insert_rows
from tests.test_bandwidth_real import (
    REQUESTER,
    SPEC,
    N,
    _move,
    capped_nodes,
    proxy,
    start_counted,
    study_files,
)

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]
__all__ = ["proxy", "study_files"]  # fixtures used here

LINK_MBPS, RULE_MBPS = 100, 30
CAPPED, FREE = "CLOUDNS", "CLOUDFREE"


@pytest.fixture
def link(tmp_path: Path) -> Iterator[tuple[ShapedLink, StoreSCP]]:
    if os.geteuid() != 0:
        message = "a network namespace needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    shaped = ShapedLink(str(100 + worker))  # names and a subnet of its own per xdist worker
    with shaped.up():
        shaped.shape(LINK_MBPS)
        # storescp takes any called AE title (FREE too); --fork: both nodes' associations at once
        scp = StoreSCP(tmp_path / "scp", CAPPED, extra=["--fork"])
        scp.prefix, scp.host = shaped.prefix, shaped.ns_ip
        scp.start()
        try:
            yield shaped, scp
        finally:
            scp.stop()


def _peers(scp: StoreSCP) -> list[dict[str, object]]:
    where = {"host": scp.host, "port": scp.port, "check_host": False}
    return [
        {"ae_title": REQUESTER, "host": "127.0.0.1", "port": 1},
        {"ae_title": CAPPED, **where, "cap_pulls": True},
        {"ae_title": FREE, **where},
    ]


def _measured(shaped: ShapedLink, move: Callable[[], None]) -> float:
    with RateProbe(shaped) as probe:
        move()
    assert probe.total > N * 400_000, probe.total  # the study crossed this link
    return probe.mbps()


def test_the_rule_holds_what_crosses_a_shaped_link(
    proxy: Callable[..., Server], study_files: list[Path], link: tuple[ShapedLink, StoreSCP]
) -> None:
    shaped, scp = link
    server = proxy(_peers(scp), [{"mbps": RULE_MBPS}])
    free = _measured(shaped, lambda: _move(server.port, FREE, study_files))
    capped = _measured(shaped, lambda: _move(server.port, CAPPED, study_files))
    assert capped == pytest.approx(RULE_MBPS, rel=0.10), f"capped {capped:.1f} Mbit/s (uncapped {free:.1f})"
    assert free > 1.5 * RULE_MBPS, f"uncapped {free:.1f} Mbit/s on a {LINK_MBPS} Mbit/s link"


@pytest.mark.postgresql
def test_two_nodes_together_stay_within_the_rule_on_the_link(
    pg_journal: str, study_files: list[Path], tmp_path: Path, link: tuple[ShapedLink, StoreSCP]
) -> None:
    shaped, scp = link
    engine = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(engine)
    insert_rows(engine, [exam_row(SPEC)])
    engine.dispose()
    pacs = FakePacs(study_files).start()
    rig = capped_nodes(tmp_path, pg_journal, pacs, scp.remote, RULE_MBPS, check_host=False)
    try:
        ports = start_counted(rig)

        def both() -> None:
            moves = [threading.Thread(target=_move, args=(port, CAPPED, study_files)) for port in ports]
            for t in moves:
                t.start()
            for t in moves:
                t.join(90)

        together = _measured(shaped, both)
        assert together == pytest.approx(RULE_MBPS, rel=0.10), f"two nodes together: {together:.1f} Mbit/s"
    finally:
        rig.stop()
        pacs.stop()
