"""Relay faults with a controllable pynetdicom PACS / destination (testkit.fakepacs).

Every fault ends with the right final status and counts, the journal says so, and the proxy
keeps serving (an echo afterwards). No sleeps: the fake PACS stalls on events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import NODELAY_HANDLERS, Remote, c_echo, guard_requestor
from testkit import free_port, wait_until
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.fakeview import AllVisible
from testkit.samples import StudySpec, write_study

CLOUD = "CLOUD"


@dataclass
class Rig:
    pacs: FakePacs
    dest: FakeDestination
    server: Server
    ctx: AppContext
    config: Config
    files: list[Path]
    study_uid: str

    @property
    def proxy(self) -> Remote:
        return Remote("DICOMPROXY", "127.0.0.1", self.server.port)

    def move(self, dest: str = "FAKEDEST", **kwargs: Any) -> scu.RetrieveSummary:
        query = scu.identifier(study_uids=[self.study_uid])
        return scu.move(self.proxy, dest, query, calling_ae=CLOUD, timeout=60, **kwargs)

    def last_job(self) -> dict[str, Any]:
        return self.ctx.journal.recent(1)[0]

    def still_serving(self) -> bool:
        return c_echo(CLOUD, self.proxy).ok


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("MR", accession="F0001", series=1, images_per_series=5, seed=7)
    return write_study(spec, tmp_path_factory.mktemp("fault-study"))


#: Both upstream methods, each on the list-first path and on the early-start path (the fake PACS
#: answers STUDY-level C-FINDs with a count and SOP classes, as Orthanc does).
BOTH_PATHS = ["c-move", "c-get", "c-move/early", "c-get/early"]


@pytest.fixture(params=["c-move", "c-get"])
def rig(
    request: pytest.FixtureRequest, make_config: Callable[..., Config], study_files: list[Path]
) -> Iterator[Rig]:
    method, _, path = str(request.param).partition("/")
    proxy_port = free_port()
    dest = FakeDestination().start()
    pacs = FakePacs(study_files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)})
    pacs.behaviour.study_level = path == "early"
    pacs.start()
    config = make_config(
        # A lost A-ABORT (pynetdicom aborting from inside a handler does not always get it out)
        # then ends as a DIMSE timeout on the onward association: same status, bounded wait.
        proxy={"port": proxy_port, "dimse_timeout": 5.0, "retries": 2, "retry_delay": 0.01},
        pacs={
            "ae_title": pacs.ae_title,
            "host": "127.0.0.1",
            "port": pacs.port,
            "retrieve": method,
            "dimse_timeout": 30.0,
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": dest.port},
        ],
    )
    ctx = build_context(config, view=AllVisible(), pending_interval=0.1)
    server = Server(config, ctx)
    server.start()
    study_uid = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    yield Rig(pacs, dest, server, ctx, config, study_files, study_uid)
    pacs.stop()
    server.stop(drain_timeout=2.0)
    dest.stop()


def sop_uids(files: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def counts_seen() -> tuple[list[tuple[int | None, int, int, int]], Callable[[scu.RetrieveSummary], None]]:
    """(remaining, completed, failed, warning) of every Pending response, and the callback that
    records them."""
    seen: list[tuple[int | None, int, int, int]] = []
    return seen, lambda s: seen.append((s.remaining, s.completed, s.failed, s.warning))


@pytest.mark.parametrize("rig", BOTH_PATHS, indirect=True)
def test_happy_path_counts_and_journal(rig: Rig) -> None:
    seen, progress = counts_seen()
    result = rig.move(progress=progress)
    assert result.status == 0x0000, result.line()
    # every Pending response accounts for all 5 sub-operations (PS3.4 C.4.2.1.6), the last none left
    assert seen and all(r is not None and r + c + f + w == 5 for r, c, f, w in seen), seen
    assert seen[-1] == (0, 5, 0, 0), seen
    assert (result.completed, result.failed, result.warning) == (5, 0, 0)
    assert sorted(uid for uid, _ in rig.dest.received) == sorted(sop_uids(rig.files))
    assert set(rig.dest.originators) == {(CLOUD, 1)}  # PS3.4 C.4.2.2.3: the requester and its Message ID
    job = rig.last_job()
    assert (job["outcome"], job["expected"], job["completed"]) == ("success", 5, 5)
    assert job["bytes_out"] > 0
    full = rig.ctx.journal.get(job["id"], all_instances=True)
    assert full is not None and {i["state"] for i in full.instances} == {"sent"}
    assert all(i["transfer_syntax"] for i in full.instances)


@pytest.mark.parametrize("rig", BOTH_PATHS, indirect=True)
def test_pacs_sends_fewer_than_announced(rig: Rig) -> None:
    phantoms = ["2.25.111", "2.25.222"]
    rig.pacs.behaviour.phantom_uids = phantoms
    seen, progress = counts_seen()
    result = rig.move(progress=progress)
    assert result.status == 0xB000, result.line()
    assert seen and all(r is not None and r + c + f + w == 7 for r, c, f, w in seen), seen
    assert (result.remaining or 0, result.completed + result.failed) == (0, 7)
    assert (result.completed, result.failed) == (5, 2)
    assert sorted(result.failed_uids) == sorted(phantoms)
    job = rig.ctx.journal.get(rig.last_job()["id"])
    assert job is not None and job.row["outcome"] == "partial"
    assert sorted(i["sop_instance_uid"] for i in job.instances if i["state"] == "missing") == sorted(phantoms)
    assert rig.still_serving()


@pytest.mark.parametrize("rig", BOTH_PATHS, indirect=True)
def test_pacs_aborts_mid_study(rig: Rig) -> None:
    rig.pacs.behaviour.abort_after = 2
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed) == (2, 3)
    assert sorted(result.failed_uids) == sorted(sop_uids(rig.files)[2:])
    job = rig.last_job()
    assert job["outcome"] == "partial" and "aborted or stopped answering" in job["error"]
    assert rig.still_serving()


def early_started(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the last job started before its instance list was known (its first log line)."""
    return any("announced by the PACS, listing them meanwhile" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("rig", ["c-move/early", "c-get/early"], indirect=True)
def test_early_start_listing_fails_pacs_aborts(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Early-start path, the IMAGE-level listing fails and the PACS aborts after 2 of the 5 it
    announced: the 3 never received are failed sub-operations (announced − completed), counted
    without UIDs to name, and the job ends 0xB000, not Success (issue 18, mutant 6)."""
    caplog.set_level("INFO", logger="dicomproxy.relay")
    rig.pacs.behaviour.image_find_status = 0xA700
    rig.pacs.behaviour.abort_after = 2
    seen, progress = counts_seen()
    result = rig.move(progress=progress)
    assert seen and all(r is not None and r + c + f + w == 5 for r, c, f, w in seen), seen
    assert early_started(caplog)
    assert any("listing the instances failed" in r.getMessage() for r in caplog.records)
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed, result.warning, result.failed_uids) == (2, 3, 0, [])
    job = rig.last_job()
    assert (job["outcome"], job["expected"], job["completed"], job["failed"]) == ("partial", 5, 2, 3)
    assert rig.still_serving()


@pytest.mark.parametrize("rig", ["c-move/early", "c-get/early"], indirect=True)
def test_early_start_listing_fails_phantoms(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Early-start path, listing fails, the PACS announces 7 and sends its 5: 2 failed, 0xB000."""
    caplog.set_level("INFO", logger="dicomproxy.relay")
    rig.pacs.behaviour.image_find_status = 0xA700
    rig.pacs.behaviour.phantom_uids = ["2.25.111", "2.25.222"]
    seen, progress = counts_seen()
    result = rig.move(progress=progress)
    assert early_started(caplog)
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed) == (5, 2)
    # counted from the announced 7 throughout (the list never came)
    assert seen and all(r is not None and r + c + f + w == 7 for r, c, f, w in seen), seen
    assert sorted(uid for uid, _ in rig.dest.received) == sorted(sop_uids(rig.files))
    job = rig.last_job()
    assert (job["outcome"], job["expected"], job["completed"], job["failed"]) == ("partial", 7, 5, 2)


@pytest.mark.parametrize("rig", ["c-move/early", "c-get/early"], indirect=True)
def test_early_start_listing_fails_nothing_lost(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Early-start path, listing fails but every announced instance arrives: Success."""
    caplog.set_level("INFO", logger="dicomproxy.relay")
    rig.pacs.behaviour.image_find_status = 0xA700
    seen, progress = counts_seen()
    result = rig.move(progress=progress)
    assert early_started(caplog)
    assert result.status == 0x0000, result.line()
    assert (result.completed, result.failed) == (5, 0)
    assert seen and all(r is not None and r + c + f + w == 5 for r, c, f, w in seen), seen
    assert seen[-1] == (0, 5, 0, 0), seen
    assert rig.last_job()["outcome"] == "success"


@pytest.mark.parametrize("rig", ["c-move/early", "c-get/early"], indirect=True)
@pytest.mark.parametrize("announced", [True, False], ids=["count", "no-count"])
def test_early_start_while_the_listing_is_held(
    rig: Rig, caplog: pytest.LogCaptureFixture, announced: bool
) -> None:
    """Every instance arrives while the IMAGE-level listing is still held. With a count from the
    PACS, the Pending responses count from it down to 0 remaining (each Pending carries Number of
    Remaining Sub-operations, PS3.4 C.4.2.1.6); without one (dcmqrscp), none is sent until the
    list is known, rather than one with a made-up count."""
    caplog.set_level("INFO", logger="dicomproxy.relay")
    gate = threading.Event()
    rig.pacs.behaviour.listing_gate = gate
    rig.pacs.behaviour.announce_count = announced
    seen, progress = counts_seen()
    holder: dict[str, scu.RetrieveSummary] = {}
    thread = threading.Thread(target=lambda: holder.update(r=rig.move(progress=progress)))
    thread.start()
    try:
        wait_until(lambda: len(rig.dest.received) == 5, 30, "all five at the destination")
        if announced:
            wait_until(lambda: bool(seen) and seen[-1][0] == 0, 20, "a Pending with 0 remaining")
            assert all(r is not None and r + c + f + w == 5 for r, c, f, w in seen), seen
            assert seen[-1] == (0, 5, 0, 0)
        else:
            assert seen == []
    finally:
        gate.set()
        thread.join(60)
    messages = " ".join(r.getMessage() for r in caplog.records)
    if announced:
        assert "5 instance(s) announced by the PACS, listing them meanwhile" in messages
    else:
        assert "? instance(s) (the PACS announces no count), listing them meanwhile" in messages
    result = holder["r"]
    assert (result.status, result.completed, result.failed) == (0x0000, 5, 0), result.line()
    job = rig.last_job()
    assert (job["outcome"], job["expected"], job["completed"]) == ("success", 5, 5)


@pytest.mark.parametrize("rig", ["c-move/early", "c-get/early"], indirect=True)
@pytest.mark.parametrize("delta", [-2, -4])
def test_early_start_pacs_sends_more_than_announced(rig: Rig, delta: int) -> None:
    """The PACS announces 3 (or 1) and sends 5 while its listing is held: Remaining never goes
    below 0 (it is an unsigned count), every instance is delivered, and the list decides the total."""
    gate = threading.Event()
    rig.pacs.behaviour.listing_gate = gate
    rig.pacs.behaviour.announce_delta = delta
    seen, progress = counts_seen()
    holder: dict[str, scu.RetrieveSummary] = {}
    thread = threading.Thread(target=lambda: holder.update(r=rig.move(progress=progress)))
    thread.start()
    try:
        wait_until(lambda: len(rig.dest.received) == 5, 30, "all five at the destination")
    finally:
        gate.set()
        thread.join(60)
    assert seen and all(r is not None and r >= 0 for r, _, _, _ in seen), seen
    assert seen[-1] == (0, 5, 0, 0), seen  # nothing left once the announced count is used up
    result = holder["r"]
    assert (result.status, result.completed, result.failed) == (0x0000, 5, 0), result.line()
    assert rig.last_job()["expected"] == 5


@pytest.mark.parametrize("rig", ["c-move/early", "c-get/early"], indirect=True)
def test_early_start_the_list_decides_the_count(rig: Rig) -> None:
    """The PACS announces 7 but lists and sends 5. The instances are held until the list is
    merged: from then on the Pending counts follow the list (5 in all, 0 left at the end), and
    the job is a Success — the announced count was only a first guess."""
    rig.pacs.behaviour.announce_delta = 2
    rig.pacs.behaviour.gate_at = 0
    seen, progress = counts_seen()
    holder: dict[str, scu.RetrieveSummary] = {}
    thread = threading.Thread(target=lambda: holder.update(r=rig.move(progress=progress)))
    thread.start()
    try:
        assert rig.pacs.behaviour.at_gate.wait(30), "PACS never started sending"
        wait_until(lambda: rig.last_job()["expected"] == 5, 30, "the instance list merged")
        # responses arrive in order: from the first one counted from the list on, all are
        wait_until(lambda: bool(seen) and sum(seen[-1][1:]) + (seen[-1][0] or 0) == 5, 30, "a heartbeat")
        before = len(seen) - 1
    finally:
        rig.pacs.behaviour.gate.set()
        thread.join(60)
    after = seen[before:]
    assert after and all(r is not None and r + c + f + w == 5 for r, c, f, w in after), seen
    assert after[-1] == (0, 5, 0, 0), seen
    result = holder["r"]
    assert (result.status, result.completed, result.failed) == (0x0000, 5, 0), result.line()


@pytest.mark.parametrize("rig", BOTH_PATHS, indirect=True)
def test_destination_rejects_one_instance(rig: Rig) -> None:
    bad = sop_uids(rig.files)[1]
    rig.dest.behaviour.reject = {bad: 0xA700}
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed, result.failed_uids) == (4, 1, [bad])
    job = rig.ctx.journal.get(rig.last_job()["id"])
    assert job is not None and [(i["sop_instance_uid"], i["status"]) for i in job.instances] == [
        (bad, 0xA700)
    ]
    # the refused instance stays in the spool (not confirmed); the confirmed ones are gone
    spooled = list((rig.config.data_path / "spool").rglob("*.dcm"))
    assert len(spooled) == 1
    # and the journal knows it is the one to resend (`jobs retry`), also when listed beside the fetch
    assert [r["sop_instance_uid"] for r in rig.ctx.journal.unconfirmed(job.row["id"])] == [bad]
    assert job.row["expected"] == 5


def test_destination_rejects_everything(rig: Rig) -> None:
    """Every C-STORE refused: 0xA702, all failed and named, outcome failed, files kept."""
    rig.dest.behaviour.reject = dict.fromkeys(sop_uids(rig.files), 0xA900)
    result = rig.move()
    assert result.status == 0xA702, result.line()
    assert (result.completed, result.failed, result.warning) == (0, 5, 0)
    assert sorted(result.failed_uids) == sorted(sop_uids(rig.files))
    assert result.comment == "all sub-operations failed"
    job = rig.last_job()
    assert (job["outcome"], job["status"], job["completed"], job["failed"]) == ("failed", 0xA702, 0, 5)
    assert len(list((rig.config.data_path / "spool").rglob("*.dcm"))) == 5
    assert rig.still_serving()


@pytest.mark.parametrize("rig", BOTH_PATHS[:2], indirect=True)
def test_destination_warns(rig: Rig) -> None:
    """A warning status from the destination (0xB007, coercion of data elements) is a warning
    sub-operation: 0xB000, the instance counts as delivered (its spool file goes), not failed."""
    uids = sop_uids(rig.files)
    rig.dest.behaviour.reject = {uids[0]: 0xB007, uids[3]: 0xB000}
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed, result.warning, result.failed_uids) == (3, 0, 2, [])
    job = rig.ctx.journal.get(rig.last_job()["id"])
    assert job is not None
    assert (job.row["outcome"], job.row["completed"], job.row["warning"], job.row["failed"]) == (
        "partial",
        3,
        2,
        0,
    )
    assert sorted((i["sop_instance_uid"], i["state"]) for i in job.instances) == sorted(
        [(uids[0], "warning"), (uids[3], "warning")]
    )
    assert rig.ctx.journal.unconfirmed(job.row["id"]) == []
    assert list((rig.config.data_path / "spool").rglob("*.dcm")) == []


@pytest.mark.parametrize("rig", BOTH_PATHS[:2], indirect=True)
def test_destination_only_warns(rig: Rig) -> None:
    """Warnings only, nothing completed: still 0xB000 (delivered), never 0xA702."""
    rig.dest.behaviour.reject = dict.fromkeys(sop_uids(rig.files), 0xB007)
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed, result.warning) == (0, 0, 5)
    assert rig.last_job()["outcome"] == "partial"


def test_transient_rejection_is_retried(rig: Rig) -> None:
    """0xA700 (out of resources) twice, then Success: the third attempt completes the job."""
    flaky = sop_uids(rig.files)[1]
    rig.dest.behaviour.flaky = {flaky: [0xA700, 0xA702]}
    result = rig.move()
    assert result.status == 0x0000, result.line()
    assert (result.completed, result.failed) == (5, 0)
    assert rig.dest.attempts.count(flaky) == 3
    assert sorted(uid for uid, _ in rig.dest.received) == sorted(sop_uids(rig.files))
    assert list((rig.config.data_path / "spool").rglob("*.dcm")) == []


def test_transient_rejection_gives_up_after_retries(rig: Rig) -> None:
    bad = sop_uids(rig.files)[2]
    rig.dest.behaviour.reject = {bad: 0xA700}
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed, result.failed_uids) == (4, 1, [bad])
    assert rig.dest.attempts.count(bad) == 3  # 1 + retries = 2


def test_permanent_rejection_is_not_retried(rig: Rig) -> None:
    bad = sop_uids(rig.files)[2]
    rig.dest.behaviour.reject = {bad: 0xA900}  # data set does not match SOP class: would fail again
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert rig.dest.attempts.count(bad) == 1


def test_destination_abort_once_reopens_association(rig: Rig) -> None:
    """The destination aborts once: the onward association is re-opened and the instance resent."""
    rig.dest.behaviour.abort_once_at = 2
    result = rig.move()
    assert result.status == 0x0000, result.line()
    assert (result.completed, result.failed) == (5, 0)
    assert sorted(uid for uid, _ in rig.dest.received) == sorted(sop_uids(rig.files))


def test_pacs_never_answers_ends_at_total_timeout(rig: Rig) -> None:
    """The PACS takes the C-MOVE/C-GET and then says nothing (its DIMSE timeout here is 30 s):
    after [pacs] total_timeout the retrieval is aborted and the job fails with 0xC002."""
    rig.pacs.behaviour.gate_at = 0
    rig.config.pacs.__dict__["total_timeout"] = 0.5
    result = rig.move()
    assert result.status == 0xC002, result.line()
    assert "total_timeout" in result.comment
    assert (result.completed, result.failed) == (0, 5)
    job = rig.last_job()
    assert job["outcome"] == "failed" and "total_timeout" in job["error"]
    rig.pacs.behaviour.gate.set()
    assert rig.still_serving()


def test_upstream_crash_before_anything_arrived(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error in the retrieval itself (not a DICOM status) before any instance came:
    0xC002 with a generic comment, the reason only in the journal."""
    from dicomproxy.pacs.client import PacsClient

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("socket exploded in an unexpected way")

    monkeypatch.setattr(PacsClient, "retrieve", crash)
    result = rig.move()
    assert (result.status, result.comment) == (0xC002, "PACS failed"), result.line()
    assert (result.completed, result.failed) == (0, 5)
    job = rig.last_job()
    assert (job["outcome"], job["status"], job["error"]) == (
        "failed",
        0xC002,
        "socket exploded in an unexpected way",
    )
    assert rig.still_serving()


def test_destination_aborts_mid_study(rig: Rig) -> None:
    rig.dest.behaviour.abort_at = 2
    result = rig.move()
    assert result.status == 0xB000, result.line()
    assert (result.completed, result.failed) == (2, 3)
    assert rig.last_job()["error"] == "destination aborted the association"
    assert rig.still_serving()


def test_destination_refuses_association(rig: Rig) -> None:
    rig.dest.behaviour.refuse = True
    result = rig.move()
    assert result.status == 0xC003, result.line()
    assert "FAKEDEST" in result.comment
    assert rig.pacs.sent == []  # nothing fetched for a destination that is not there
    assert rig.last_job()["outcome"] == "failed"
    assert rig.still_serving()


def test_unknown_destination(rig: Rig) -> None:
    result = rig.move(dest="NOWHERE")
    assert result.status == 0xA801, result.line()
    assert rig.last_job()["outcome"] == "refused"


def test_streaming_first_instance_before_pacs_finishes(rig: Rig, tmp_path: Path) -> None:
    """The PACS stalls after its first instance until the destination holds that instance.

    Without streaming the destination would never get it and the wait below times out.
    """
    storescp = StoreSCP(tmp_path / "scp", "FAKEDEST").start()
    try:
        rig.dest.stop()
        # same AE title, now a real storescp, on the config object the running relay reads
        moved = replace(rig.config.peers[1], port=storescp.port)
        object.__setattr__(rig.config, "peers", (rig.config.peers[0], moved))
        rig.pacs.behaviour.gate_at = 1
        holder: dict[str, scu.RetrieveSummary] = {}
        thread = threading.Thread(target=lambda: holder.update(r=rig.move()))
        thread.start()
        assert rig.pacs.behaviour.at_gate.wait(30), "PACS never started sending"
        wait_until(lambda: len(storescp.received()) >= 1, 30, "first instance at the destination")
        assert rig.pacs.sent == sop_uids(rig.files)[:1]  # the PACS is still holding the rest
        rig.pacs.behaviour.gate.set()
        thread.join(60)
        assert holder["r"].status == 0x0000, holder["r"].line()
        assert len(storescp.received()) == 5
        assert holder["r"].pending >= 2
    finally:
        storescp.stop()


def test_pending_responses_while_pacs_is_slow(rig: Rig) -> None:
    rig.pacs.behaviour.gate_at = 0
    seen: list[int] = []

    def progress(s: scu.RetrieveSummary) -> None:
        seen.append(s.completed)
        if len(seen) == 3:
            rig.pacs.behaviour.gate.set()  # three heartbeats with nothing done, then let it go

    result = rig.move(progress=progress)
    assert result.status == 0x0000, result.line()
    assert seen[:3] == [0, 0, 0]


@pytest.mark.parametrize("rig", BOTH_PATHS, indirect=True)
def test_cancel_mid_study(rig: Rig) -> None:
    """The cloud's C-CANCEL ends the job at once (0xFE00 with the counts so far) and is passed on: the
    PACS gets a C-CANCEL for our C-MOVE/C-GET, answers Cancel and the association is released, not
    aborted (PS3.4 C.4.2.3, C.4.3.3)."""
    rig.pacs.behaviour.gate_at = 2
    result = rig.move(cancel=lambda s: s.completed >= 2)
    assert result.status == 0xFE00, result.line()
    assert result.completed == 2 and result.remaining == 3
    assert rig.last_job()["outcome"] == "cancelled"
    rig.pacs.behaviour.gate.set()  # the PACS was held before its third instance; it now sees the cancel
    assert rig.pacs.behaviour.cancelled.wait(10)
    wait_until(lambda: bool(rig.pacs.retrievals_ended), 10, "the PACS association ended")
    assert rig.pacs.retrievals_ended == ["released"]
    assert len(rig.dest.received) == 2
    assert rig.still_serving()


def test_pacs_down(make_config: Callable[..., Config], run_proxy: Callable[..., Server]) -> None:
    config = make_config(
        pacs={"ae_title": "FAKEPACS", "host": "127.0.0.1", "port": free_port(), "connect_timeout": 2.0},
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": 1},
        ],
    )
    ctx = build_context(config, view=AllVisible())
    server = run_proxy(config, ctx)
    proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)
    result = scu.move(proxy, "DEST", scu.identifier(study_uids=["2.25.1"]), calling_ae=CLOUD, timeout=30)
    assert result.status == 0xC002, result.line()
    assert "PACS" in result.comment
    job = ctx.journal.recent(1)[0]
    assert job["outcome"] == "failed" and job["status"] == 0xC002
    assert c_echo(CLOUD, proxy).ok


def test_unsolicited_store_from_pacs_is_refused(rig: Rig) -> None:
    ae = AE(ae_title=rig.pacs.ae_title)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    handlers: Any = NODELAY_HANDLERS
    assoc = ae.associate("127.0.0.1", rig.server.port, ae_title="DICOMPROXY", evt_handlers=handlers)
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dcmread(rig.files[0]))
    finally:
        assoc.release()
        ae.shutdown()
    assert status.Status == 0xC000
    assert not list(rig.config.data_path.rglob("*.dcm"))
    assert rig.ctx.journal.recent(1) == []


def test_cli_move_get_and_jobs(rig: Rig, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dicomproxy.cli import cli

    bad = sop_uids(rig.files)[0]
    rig.dest.behaviour.reject = {bad: 0xA700}
    runner = CliRunner()
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(rig.server.port),
        "--calling",
        CLOUD,
        "--study",
        rig.study_uid,
    ]
    moved = runner.invoke(cli, ["move", *common, "--dest", "FAKEDEST"])
    assert moved.exit_code == 0, moved.output
    assert "5/5 instances" in moved.output and "status 0xB000 (Warning): completed=4 failed=1" in moved.output
    got = runner.invoke(cli, ["get", *common, "--out", str(tmp_path / "got")])
    assert got.exit_code == 0, got.output
    assert "received=5" in got.output and len(list((tmp_path / "got").iterdir())) == 5

    toml = tmp_path / "proxy.toml"
    toml.write_text(
        f'[proxy]\ndata_dir = "{rig.config.data_path}"\n[hospital]\nid = "74580626"\n'
        f'[view]\nurl = "sqlite://"\n[pacs]\nae_title = "X"\nhost = "127.0.0.1"\nport = 1\n'
    )
    listed = runner.invoke(cli, ["jobs", "-c", str(toml)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert "get" in lines[1] and "success" in lines[1]
    assert "move" in lines[2] and "partial" in lines[2] and "B000" in lines[2]
    move_id = lines[2].split()[0]
    shown = runner.invoke(cli, ["jobs", "-c", str(toml), "show", move_id])
    assert shown.exit_code == 0, shown.output
    assert "failed   0xA700 " + bad in shown.output


def test_send_pdu_capped_for_unlimited_peer(rig: Rig) -> None:
    """FakeDestination announces Maximum Length 0 (unlimited); we still fragment at SEND_PDU_CAP."""
    from dicomproxy.transport.pynetdicom_link import SEND_PDU_CAP, cap_send_pdu

    ae = AE(ae_title=CLOUD)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
    handlers: Any = NODELAY_HANDLERS
    assoc = ae.associate("127.0.0.1", rig.dest.port, ae_title="FAKEDEST", evt_handlers=handlers)
    try:
        assert assoc.dimse.maximum_pdu_size == 0
        cap_send_pdu(assoc)
        assert assoc.dimse.maximum_pdu_size == SEND_PDU_CAP
    finally:
        assoc.release()
        ae.shutdown()


@pytest.mark.parametrize(
    ("mode", "syntaxes"), [("lossless", "all"), ("lossless", "implicit"), ("none", "implicit")]
)
def test_compression_through_the_relay(
    mode: str, syntaxes: str, make_config: Callable[..., Config], study_files: list[Path], tmp_path: Path
) -> None:
    """Issue 5 end to end: the accepted syntax arrives, bit-exact, and the journal says which."""
    import numpy as np

    proxy_port = free_port()
    dest = StoreSCP(tmp_path / "dest", "DEST", syntaxes=syntaxes).start()
    pacs = FakePacs(
        study_files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)}
    ).start()
    config = make_config(
        proxy={"port": proxy_port, "dimse_timeout": 30.0},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port},
        compression={"mode": mode},
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port},
        ],
    )
    ctx = build_context(config, view=AllVisible())
    server = Server(config, ctx)
    server.start()
    try:
        uid = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
        proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)
        result = scu.move(proxy, "DEST", scu.identifier(study_uids=[uid]), calling_ae=CLOUD, timeout=60)
        assert (result.status, result.completed) == (0x0000, 5), result.line()
        job = ctx.journal.get(ctx.journal.recent(1)[0]["id"], all_instances=True)
        assert job is not None
        sent = {i["sop_instance_uid"]: i["transfer_syntax"] for i in job.instances}
        source = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, study_files)}
        for path in dest.received():
            ds = dcmread(path)
            ts = str(ds.file_meta.TransferSyntaxUID)
            assert sent[str(ds.SOPInstanceUID)] == ts  # the journal records what was sent
            if syntaxes == "implicit":
                assert ts == "1.2.840.10008.1.2"
            elif mode == "lossless":
                assert ds.file_meta.TransferSyntaxUID.is_compressed
            assert np.array_equal(ds.pixel_array, source[str(ds.SOPInstanceUID)].pixel_array)
    finally:
        pacs.stop()
        server.stop(drain_timeout=2.0)
        dest.stop()
