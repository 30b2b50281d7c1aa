"""Several onward associations per C-MOVE job to one destination (``onward_associations``, issue 17):
every instance reaches the destination exactly once and is counted and journalled once, also when
one of the associations is aborted mid-study (it is re-opened, the instance it held resent). Real
peers: DCMTK storescp (``--fork``, one process per association, ``+uf`` unique file names so a
duplicate would show as a second file with the same SOP Instance UID) and the pynetdicom
destination of testkit, which names the association that carried each instance.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomproxy.app import build_context
from dicomproxy.config import Config, ConfigError
from dicomproxy.relay.journal import Journal
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.samples import StudySpec, write_study
from tests.test_recovery import AllVisible

CLOUD, DEST = "CLOUD", "LANEDEST"
N = 12


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("CT", accession="LN001", series=2, images_per_series=N // 2, seed=47)
    return write_study(spec, tmp_path_factory.mktemp("lanes-study"))


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def proxy(
    make_config: Callable[..., Config], study_files: list[Path]
) -> Iterator[Callable[[int, int, int], Server]]:
    started: list[FakePacs | Server] = []

    def make(dest_port: int, lanes: int, peer_lanes: int = 0) -> Server:
        proxy_port = free_port()
        pacs = FakePacs(
            study_files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)}
        ).start()
        dest = {"ae_title": DEST, "host": "127.0.0.1", "port": dest_port}
        if peer_lanes:
            dest["onward_associations"] = peer_lanes
        config = make_config(
            proxy={
                "port": proxy_port,
                "retries": 3,
                "retry_delay": 0.05,
                "reconnect_window": 30.0,
                "onward_associations": lanes,
            },
            pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port, "retrieve": "c-move"},
            peers=[{"ae_title": CLOUD, "host": "127.0.0.1", "port": 1}, dest],
        )
        server = Server(config, build_context(config, view=AllVisible(), pending_interval=0.2))
        server.start()
        started.extend([pacs, server])
        return server

    yield make
    for thing in reversed(started):
        if isinstance(thing, Server):
            thing.stop(drain_timeout=2.0)
        else:
            thing.stop()


def _move(server: Server, study_files: list[Path]) -> scu.RetrieveSummary:
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    return scu.move(
        Remote("DICOMPROXY", "127.0.0.1", server.port),
        DEST,
        scu.identifier(study_uids=[study]),
        calling_ae=CLOUD,
        timeout=60,
    )


def _journalled(server: Server) -> tuple[dict[str, object], Counter[str]]:
    journal = Journal.for_config("", server.config.data_path)
    try:
        job = journal.recent(1)[0]
        view = journal.get(int(job["id"]), all_instances=True)
        assert view is not None
        return job, Counter(str(r["sop_instance_uid"]) for r in view.instances)
    finally:
        journal.close()


@pytest.mark.dcmtk
def test_three_associations_to_storescp_each_instance_once(
    proxy: Callable[..., Server], study_files: list[Path], tmp_path: Path
) -> None:
    dest = StoreSCP(tmp_path / "scp", DEST, extra=["--fork", "+uf", "-v"]).start()
    try:
        server = proxy(dest.port, 3)
        result = _move(server, study_files)
        assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
        files = dest.received()
        per_uid = Counter(_uid(p) for p in files)
        assert set(per_uid) == {_uid(p) for p in study_files}
        assert set(per_uid.values()) == {1}, "an instance arrived twice"
        job, journalled = _journalled(server)
        assert (job["outcome"], job["completed"], job["failed"]) == ("success", N, 0)
        assert journalled == Counter({uid: 1 for uid in per_uid})
        log = (dest.workdir / f"storescp-{dest.port}.log").read_text(errors="replace")
        # 3 onward associations + the readiness C-ECHO of testkit
        assert log.count("Association Received") == 4, log[-2000:]
    finally:
        dest.stop()


@pytest.mark.dcmtk
def test_destination_serving_one_association_at_a_time(
    proxy: Callable[..., Server], study_files: list[Path], tmp_path: Path
) -> None:
    """storescp without --fork: the further associations wait in its listen backlog while the
    first one carries the study; they are released as soon as they open after the job, so the next
    job's association is not held up (it was, before: 0xC003 after the ACSE timeout)."""
    dest = StoreSCP(tmp_path / "scp", DEST, extra=["+uf"]).start()
    try:
        server = proxy(dest.port, 3)
        for _ in range(2):
            result = _move(server, study_files)
            assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
        per_uid = Counter(_uid(p) for p in dest.received())
        assert set(per_uid) == {_uid(p) for p in study_files}
        assert set(per_uid.values()) == {2}  # once per move
    finally:
        dest.stop()


def test_one_association_aborted_mid_study_nothing_lost_or_doubled(
    proxy: Callable[..., Server], study_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomproxy.relay")
    dest = FakeDestination(DEST).start()
    dest.behaviour.abort_once_at = 5  # the association carrying the 6th C-STORE is aborted under it
    try:
        server = proxy(dest.port, 1, peer_lanes=3)  # the peer's own key wins over [proxy]
        result = _move(server, study_files)
        assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
        per_uid = Counter(uid for uid, _ in dest.received)
        assert set(per_uid) == {_uid(p) for p in study_files}
        assert set(per_uid.values()) == {1}, "an instance arrived twice"
        assert len(set(dest.carried_by)) >= 2, dest.carried_by  # spread over associations
        assert "onward association back after" in caplog.text  # the aborted one was re-opened
        job, journalled = _journalled(server)
        assert (job["outcome"], job["completed"], job["failed"]) == ("success", N, 0)
        assert journalled == Counter({uid: 1 for uid in per_uid})
    finally:
        dest.stop()


@pytest.mark.parametrize(
    ("where", "value"),
    [("proxy", 0), ("proxy", 17), ("proxy", "2"), ("peer", 0)],
)
def test_onward_associations_validated_at_load(
    make_config: Callable[..., Config], where: str, value: object
) -> None:
    peer: dict[str, object] = {"ae_title": DEST, "host": "127.0.0.1", "port": 1}
    sections: dict[str, object] = {"peers": [peer]}
    if where == "proxy":
        sections["proxy"] = {"onward_associations": value}
    else:
        peer["onward_associations"] = value
    with pytest.raises(ConfigError, match="onward_associations"):
        make_config(**sections)


def test_cancel_while_three_c_stores_are_in_flight_counts_and_journals_what_arrived(
    proxy: Callable[..., Server], study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-CANCEL of a 3-lane job while each lane has a C-STORE in flight at a slow destination: the
    lanes finish those C-STOREs after the pump stopped handing out work; their results come back
    late, and are counted in the Cancel response and journalled like the others (else a retry
    would send them again and the requester's count would be short)."""
    import threading

    from dicomproxy.relay.lanes import Lanes

    dest = FakeDestination(DEST)
    dest.behaviour.hold_from = 3  # the first 3 answered at once, the next 3 (one per lane) held
    dest.start()
    closing = threading.Event()
    close = Lanes.close

    def closing_lanes(self: Lanes[object], wait: float) -> object:
        closing.set()
        return close(self, wait)

    monkeypatch.setattr(Lanes, "close", closing_lanes)

    def release_when_the_lanes_close() -> None:  # the held C-STOREs end while the lanes stop
        closing.wait(60)
        dest.behaviour.hold.set()

    releaser = threading.Thread(target=release_when_the_lanes_close, daemon=True)
    releaser.start()
    try:
        server = proxy(dest.port, 3)
        study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
        result = scu.move(
            Remote("DICOMPROXY", "127.0.0.1", server.port),
            DEST,
            scu.identifier(study_uids=[study]),
            calling_ae=CLOUD,
            timeout=60,
            cancel=lambda _: len(dest.behaviour.held) == 3,  # all three lanes wait on the destination
        )
        releaser.join(10)
        assert closing.is_set() and len(dest.behaviour.held) == 3
        arrived = Counter(uid for uid, _ in dest.received)
        assert len(arrived) == 6 and set(arrived.values()) == {1}, arrived
        assert result.status == 0xFE00, result.line()
        assert result.completed == 6, f"instances that arrived after the cancel not counted: {result.line()}"
        job, journalled = _journalled(server)
        assert job["outcome"] == "cancelled" and job["completed"] == 6, job
        assert set(journalled) == set(arrived), "instances that arrived after the cancel not journalled"
    finally:
        dest.behaviour.hold.set()
        dest.stop()
