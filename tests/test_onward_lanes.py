"""Several onward associations per C-MOVE job to one destination (``onward_associations``, issue 17):
every instance reaches the destination exactly once and is counted and journalled once, also when
one of the associations is aborted mid-study (it is re-opened, the instance it held resent). Real
peers: DCMTK storescp (``--fork``, one process per association, ``+uf`` unique file names so a
duplicate would show as a second file with the same SOP Instance UID) and the pynetdicom
destination of testkit, which names the association that carried each instance.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from pydicom import dcmread

from dicomproxy.config import Config, ConfigError
from dicomproxy.errors import DestinationUnavailable
from dicomproxy.relay.destinations import Destination
from dicomproxy.relay.forward import SendResult
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.lanes import Lanes
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination
from testkit.moverig import MoveProxies, move_study
from testkit.samples import StudySpec, write_study

CLOUD, DEST = "CLOUD", "LANEDEST"
N = 12


# --- Lanes alone: scripted associations, no peer (unit tests) -------------------------------------
#
# The tests further down drive Lanes through the pump against real destinations; these pin its own
# bookkeeping — what is free, what is in flight, which lane is up, what close() gives back — with
# associations and send/reopen functions scripted in the test (a mock per association). They come
# first: they take a second, and a broken Lanes stops the file early (scripts/mutation.sh).

OK = SendResult(0x0000, bytes_out=100)


class ScriptedAssociation:
    """One onward association of the unit tests: ``another`` opens the next one (or is refused, or
    waits for ``gate``); every association opened is kept in ``opened``."""

    def __init__(self, name: str = "lane0", opened: list[ScriptedAssociation] | None = None) -> None:
        self.name = name
        self.opened: list[ScriptedAssociation] = opened if opened is not None else []
        self.alive = True
        self.closed = False
        self.bytes_out = 0
        self.carried: list[int] = []
        self.refuse = False
        self.gate: threading.Event | None = None
        self.acse_timeouts: list[float | None] = []

    def another(self, acse_timeout: float | None = None) -> ScriptedAssociation:
        self.acse_timeouts.append(acse_timeout)
        if self.gate is not None:
            self.gate.wait(10)
        if self.refuse:
            raise DestinationUnavailable("association refused")
        extra = ScriptedAssociation(f"lane{len(self.opened) + 1}", self.opened)
        self.opened.append(extra)
        return extra

    def close(self) -> None:
        self.closed = True


def _lanes(
    primary: ScriptedAssociation,
    count: int,
    send: Callable[[ScriptedAssociation, int], SendResult | None],
    reopen: Callable[[ScriptedAssociation, threading.Event], bool] = lambda a, stop: True,
    retries: int = 2,
    resend: Callable[[int], int] = lambda w: w,
) -> Lanes[int]:
    return Lanes(
        cast(Destination, primary),
        count,
        cast(Callable[[Destination, int], "SendResult | None"], send),
        cast(Callable[[Destination, threading.Event], bool], reopen),
        resend,
        retries,
        "job 7",
    )


def _carry(assoc: ScriptedAssociation, work: int) -> SendResult:
    assoc.carried.append(work)
    assoc.bytes_out += 100
    return OK


def _drive(lanes: Lanes[int], works: list[int]) -> list[tuple[int, SendResult]]:
    """The pump's part: hand out while a lane is free, take the results back (a lane silent for
    20 s fails the test instead of hanging it)."""
    pending, out, silent = list(works), [], 0
    while pending or lanes.in_flight:
        if pending and lanes.free:
            lanes.submit(pending.pop(0))
            continue
        got = lanes.take(5.0)
        silent = 0 if got else silent + 1
        assert silent < 4, f"no result for 20 s: {lanes.in_flight} in flight, {lanes.up} up"
        out.extend(got)
    return out


def test_lanes_unit_every_instance_once_and_the_further_associations_closed_at_the_end() -> None:
    primary = ScriptedAssociation()
    lanes = _lanes(primary, 3, _carry)
    got = _drive(lanes, list(range(20)))
    assert sorted(w for w, _ in got) == list(range(20)) and {r for _, r in got} == {OK}
    assert (lanes.in_flight, lanes.up, lanes.unopened, lanes.free) == (0, 3, 0, True)
    carried = [w for a in (primary, *primary.opened) for w in a.carried]
    assert sorted(carried) == list(range(20))  # each sent once, on one association
    # the further associations ask for their A-ASSOCIATE-AC with a short timeout (3 s: a
    # destination serving one association at a time must not be held up by them)
    assert primary.acse_timeouts == [3.0, 3.0] and len(primary.opened) == 2
    extra_bytes = sum(a.bytes_out for a in primary.opened)
    assert lanes.bytes_out == extra_bytes  # lane 0's bytes are the primary forwarder's own
    assert lanes.close(5.0) == ([], [])
    assert all(a.closed for a in primary.opened) and not primary.closed  # lane 0's is the job's
    assert not any(t.is_alive() for t in lanes._threads)


def test_lanes_unit_one_in_flight_per_live_lane() -> None:
    gate, started = threading.Event(), threading.Event()

    def held(assoc: ScriptedAssociation, work: int) -> SendResult:
        started.set()
        gate.wait(10)
        return _carry(assoc, work)

    lanes = _lanes(ScriptedAssociation(), 1, held)
    assert lanes.free and lanes.in_flight == 0
    lanes.submit(1)
    assert (lanes.free, lanes.in_flight) == (False, 1)
    assert started.wait(10) and lanes.take(0) == []  # 0: not waited for
    gate.set()
    assert lanes.take(10) == [(1, OK)]
    assert (lanes.free, lanes.in_flight, lanes.up) == (True, 0, 1)
    lanes.close(5.0)


def test_lanes_unit_take_waits_for_the_first_result_only_when_told_to() -> None:
    """``take(t)`` blocks up to t s for the first result (the pump's LANE_POLL), ``take(0)`` never
    blocks; every result already there comes back at once."""
    lanes = _lanes(ScriptedAssociation(), 1, _carry)
    timeouts: list[object] = []
    results = lanes._results
    real_get = results.get

    def get(block: bool = True, timeout: float | None = None) -> object:
        timeouts.append(timeout if block else "nowait")
        return real_get(block, timeout)

    results.get = get  # type: ignore[method-assign,assignment]
    assert lanes.take(0) == [] and timeouts == ["nowait"]
    timeouts.clear()
    assert lanes.take(0.01) == [] and timeouts == [0.01]
    lanes.submit(1)
    lanes.submit(2)
    got: list[tuple[int, SendResult]] = []
    while len(got) < 2:
        got.extend(lanes.take(0.5))
    assert got == [(1, OK), (2, OK)]
    lanes.close(5.0)


@pytest.mark.parametrize("losses", [1, 2])
def test_lanes_unit_a_lost_association_is_reopened_and_the_instance_resent(losses: int) -> None:
    """Lost under an instance: re-opened and the instance (unconverted: ``resend``) sent again, up
    to ``retries`` (2) times; counted once."""
    sent: list[int] = []
    reopened: list[str] = []
    left = {5: losses}

    def send(assoc: ScriptedAssociation, work: int) -> SendResult | None:
        sent.append(work)
        if left.get(work % 100, 0) > 0:
            left[work % 100] -= 1
            return None
        return _carry(assoc, work)

    def reopen(assoc: ScriptedAssociation, stop: threading.Event) -> bool:
        reopened.append(assoc.name)
        return True

    lanes = _lanes(ScriptedAssociation(), 1, send, reopen, retries=2, resend=lambda w: w + 100)
    got = _drive(lanes, list(range(8)))
    # counted as the work handed out (not as what was resent)
    assert [w for w, _ in got] == list(range(8)) and {r for _, r in got} == {OK}
    assert sent.count(5) == 1 and sent.count(105) == 1
    assert sent.count(205) == (1 if losses == 2 else 0)  # resent again from the last resend
    assert reopened == ["lane0"] * losses
    assert (lanes.up, lanes.in_flight) == (1, 0)
    lanes.close(5.0)


@pytest.mark.parametrize("alive", [True, False])
def test_lanes_unit_losses_beyond_the_retries_fail_the_instance(alive: bool) -> None:
    """Lost more than ``retries`` times: the instance fails ("destination association lost"); the
    lane is down for good only when its association is gone (``alive`` False)."""
    reopened: list[str] = []

    def send(assoc: ScriptedAssociation, work: int) -> SendResult | None:
        if work == 1:
            assoc.alive = alive
            return None
        return _carry(assoc, work)

    def reopen(assoc: ScriptedAssociation, stop: threading.Event) -> bool:
        reopened.append(assoc.name)
        return True

    lanes = _lanes(ScriptedAssociation(), 1, send, reopen, retries=2)
    lanes.submit(1)
    got = lanes.take(10)
    assert len(got) == 1 and got[0][0] == 1
    assert (got[0][1].status, got[0][1].error) == (None, "destination association lost")
    assert reopened == ["lane0", "lane0"]  # retries: 2 re-opens, then given up
    assert lanes.in_flight == 0 and lanes.up == (1 if alive else 0) and lanes.free is alive
    if alive:  # the lane goes on with the next instance
        lanes.submit(2)
        assert lanes.take(10) == [(2, OK)]
    lanes.close(5.0)


def test_lanes_unit_a_reopen_that_fails_takes_the_lane_down_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lane 0 loses its association under its first instance and cannot get it back: that
    instance fails, the lane is down; lane 1 (opened meanwhile) carries the rest."""

    def send(assoc: ScriptedAssociation, work: int) -> SendResult | None:
        if assoc.name == "lane0":
            assoc.alive = False
            return None
        return _carry(assoc, work)

    primary = ScriptedAssociation()
    primary.gate = threading.Event()  # lane 1 opens only once lane 0 has the first instance
    lanes = _lanes(primary, 2, send, reopen=lambda a, stop: False)
    lanes.submit(0)
    with caplog.at_level(logging.WARNING, logger="dicomproxy.relay"):
        first = lanes.take(10)
    assert [r.getMessage() for r in caplog.records] == ["job 7: onward association 1 lost for good"]
    assert [(w, r.status, r.error) for w, r in first] == [(0, None, "destination association lost")]
    assert (lanes.up, lanes.in_flight, lanes.free) == (1, 0, True)  # lane 1, still opening, counts
    primary.gate.set()
    got = _drive(lanes, list(range(1, 12)))
    assert sorted(w for w, r in got if r == OK) == list(range(1, 12)) == primary.opened[0].carried
    assert (lanes.up, lanes.in_flight, lanes.unopened) == (1, 0, 0)
    lanes.close(5.0)


def test_lanes_unit_a_further_association_refused_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    primary = ScriptedAssociation()
    primary.refuse = True
    lanes = _lanes(primary, 3, _carry)
    with caplog.at_level(logging.WARNING, logger="dicomproxy.relay"):
        got = _drive(lanes, list(range(6)))
        for _ in range(3):  # the two refusals' last words
            if lanes.up > 1:
                assert lanes.take(5.0) == []
    assert sorted(w for w, _ in got) == list(range(6)) and primary.carried == list(range(6))
    assert (lanes.unopened, lanes.up, lanes.in_flight) == (2, 1, 0)
    assert (
        "job 7: onward association 2 not opened (association refused); going on with the others"
        in caplog.text
    )
    assert "onward association 3 not opened" in caplog.text
    assert lanes.bytes_out == 0
    lanes.close(5.0)


def test_lanes_unit_close_returns_the_late_results_and_what_no_lane_took() -> None:
    """close() while lane 0 is in a C-STORE: that result comes back from close (it arrived), the
    instances no lane took come back unsent, and the lane thread has ended."""
    started = threading.Event()
    holder: list[Lanes[int]] = []

    def held(assoc: ScriptedAssociation, work: int) -> SendResult:
        if work == 1:
            started.set()
            holder[0]._stop.wait(10)  # finishes once the lanes are told to stop
        return _carry(assoc, work)

    lanes = _lanes(ScriptedAssociation(), 1, held)
    holder.append(lanes)
    lanes.submit(1)
    assert started.wait(10)
    lanes.submit(2)
    lanes.submit(3)
    late, left = lanes.close(10.0)
    assert late == [(1, OK)] and left == [2, 3]
    assert not lanes._threads[0].is_alive()
    # with nothing late, close() does not wait for a result: the lanes have ended
    quiet = _lanes(ScriptedAssociation(), 1, _carry)
    blocking: list[bool] = []
    real_get = quiet._results.get

    def get(block: bool = True, timeout: float | None = None) -> object:
        blocking.append(block)
        return real_get(block, timeout)

    quiet._results.get = get  # type: ignore[method-assign,assignment]
    assert quiet.close(10.0) == ([], []) and blocking == [False]


def test_lanes_unit_close_does_not_wait_for_an_association_still_opening() -> None:
    """A further association still opening when the job ends is not waited for; when it opens
    later it is released at once and carries nothing."""
    primary = ScriptedAssociation()
    primary.gate = threading.Event()
    lanes = _lanes(primary, 2, _carry)
    assert _drive(lanes, [1, 2]) == [(1, OK), (2, OK)] and primary.carried == [1, 2]
    assert lanes.close(30.0) == ([], [])
    assert lanes._threads[1].is_alive()  # still opening: not joined
    assert all(t.daemon for t in lanes._threads)  # nor would it keep the process from exiting
    primary.gate.set()
    lanes._threads[1].join(10)
    assert not lanes._threads[1].is_alive()
    assert len(primary.opened) == 1 and primary.opened[0].closed and primary.opened[0].carried == []


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("CT", accession="LN001", series=2, images_per_series=N // 2, seed=47)
    return write_study(spec, tmp_path_factory.mktemp("lanes-study"))


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def proxy(move_proxies: MoveProxies, study_files: list[Path]) -> Callable[[int, int, int], Server]:
    def make(dest_port: int, lanes: int, peer_lanes: int = 0) -> Server:
        dest = {"ae_title": DEST, "host": "127.0.0.1", "port": dest_port}
        if peer_lanes:
            dest["onward_associations"] = peer_lanes
        return move_proxies.start(
            study_files,
            [{"ae_title": CLOUD, "host": "127.0.0.1", "port": 1}, dest],
            proxy={"retries": 3, "retry_delay": 0.05, "reconnect_window": 30.0, "onward_associations": lanes},
        )[1]

    return make


def _move(server: Server, study_files: list[Path]) -> scu.RetrieveSummary:
    return move_study(server, DEST, study_files, CLOUD)


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
