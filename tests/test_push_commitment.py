"""A push item to a destination asked to commit (issue 25 item 1; PS3.4 Annex J) is ``done`` only
when every instance it stored is committed (docs/commitment.md).

Real peers: Orthanc as the PACS (C-GET), and as the destination either Orthanc (Storage Commitment
SCP, answering on a new association to the proxy declared as its modality) or the pynetdicom SCP
of ``testkit/commitscp.py`` (fails references, or stays silent); a real ``Server`` with push on,
a SQLite exam view with the study's row inserted.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select

from dicomproxy.config import Config
from dicomproxy.corrections.store import COPIES, CorrectionStore, correction_jobs, corrections
from dicomproxy.identity.corrections import corrected_uid
from dicomproxy.push.queue import PushQueue
from dicomproxy.relay.commitments import CommitmentLedger
from dicomproxy.server import Server
from dicomproxy.transport.net import Remote
from testkit import free_port, wait_until
from testkit.commitscp import CommitmentDestination
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows, update_rows
from tests.conftest import ConfigFactory, running_orthanc

SPEC = StudySpec("CT", accession="PC001", series=1, images_per_series=3, seed=471)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, list[str]]]:
    root = tmp_path_factory.mktemp("pc-pacs")
    files = write_study(SPEC, root / "study")
    with running_orthanc(root, files=files) as server:
        yield server, sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)


def _run(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: Orthanc,
    dest: Remote,
    port: int,
    **peer: Any,
) -> tuple[Server, PushQueue]:
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(SPEC, RowTimestamp=dt.datetime.now())])
    engine.dispose()
    config = make_config(
        view={"url": view_url},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "c-get"},
        peers=[
            {
                "ae_title": dest.ae_title,
                "host": "127.0.0.1",
                "port": dest.port,
                "storage_commitment": True,
                **peer,
            }
        ],
        proxy={"port": port, "retry_delay": 0.1, "retries": 1, "reconnect_window": 0},
        push={
            "enabled": True,
            "destinations": [dest.ae_title],
            "start_from": "beginning",
            "poll_interval": 0.2,
            "retry_delay": 0.3,
            "max_retry_delay": 1.0,
        },
        reports={"enabled": False},
        corrections={"poll_interval": 0.2},  # an iocm peer's corrections found at once
    )
    server = run_proxy(config)
    return server, PushQueue(server.ctx.journal.engine, "test")


def _states(server: Server, queue: PushQueue, item_id: int) -> dict[str, str]:
    ledger = server.ctx.commitments
    assert isinstance(ledger, CommitmentLedger)
    item = queue.get(item_id)
    assert item is not None
    return ledger.states_of(queue.job_ids(item_id, int(item["generation"])))


@pytest.mark.orthanc
def test_a_push_item_to_orthanc_is_done_once_orthanc_committed_every_instance(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: tuple[Orthanc, list[str]],
) -> None:
    orthanc, uids = pacs
    cloud = Orthanc(tmp_path / "cloud").start()
    try:
        port = free_port()
        cloud.add_modality("proxy", Remote("DICOMPROXY", "127.0.0.1", port))
        server, queue = _run(tmp_path, make_config, run_proxy, orthanc, cloud.remote, port)
        wait_until(lambda: [i["state"] for i in queue.items()] == ["done"], 60, "the item done")
        (item,) = queue.items()  # done only once Orthanc's report was recorded for every instance
        assert _states(server, queue, item["id"]) == dict.fromkeys(uids, "committed")
        assert cloud.instance_count() == len(uids)
    finally:
        cloud.stop()


@pytest.fixture
def commit_dest() -> Iterator[Callable[..., CommitmentDestination]]:
    made: list[CommitmentDestination] = []

    def make(mode: str, reply_port: int) -> CommitmentDestination:
        dest = CommitmentDestination(
            "PUSHCOMMIT", mode=mode, reply_to=Remote("DICOMPROXY", "127.0.0.1", reply_port)
        )
        made.append(dest)
        return dest

    yield make
    for d in made:
        d.stop()


def test_a_push_item_waits_committing_and_resends_what_failed_until_all_are_committed(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: tuple[Orthanc, list[str]],
    commit_dest: Callable[..., CommitmentDestination],
) -> None:
    """Two references fail once (0x0110): the item goes back to the queue, its next delivery sends
    exactly those two again, they are committed in a second transaction, and only then ``done``."""
    orthanc, uids = pacs
    port = free_port()
    dest = commit_dest("new", port)
    dest.fail = {uids[0], uids[2]}
    dest.start()
    server, queue = _run(
        tmp_path, make_config, run_proxy, orthanc, Remote(dest.ae_title, "127.0.0.1", dest.port), port
    )
    wait_until(lambda: [i["state"] for i in queue.items()] == ["done"], 60, "the item done")
    (item,) = queue.items()
    assert _states(server, queue, item["id"]) == dict.fromkeys(uids, "committed")
    assert Counter(u for u, _ in dest.received) == {uids[0]: 2, uids[1]: 1, uids[2]: 2}
    assert [sorted(refs) for _, refs in dest.requests] == [uids, [uids[0], uids[2]]]
    assert item["attempts"] == 2 and item["error"] == ""


@pytest.mark.parametrize(
    ("mode", "peer", "reason"),
    [
        ("new", {"commit_attempts": 2}, "2 instance(s) not committed by the destination after 2 attempt(s)"),
        (
            "silent",
            {"commit_attempts": 2, "commit_timeout": 0.2},
            "no storage commitment report for 3 instance(s)",
        ),
    ],
    ids=["keeps-failing", "silent"],
)
def test_a_push_item_whose_instances_are_never_committed_fails_with_the_reason(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: tuple[Orthanc, list[str]],
    commit_dest: Callable[..., CommitmentDestination],
    mode: str,
    peer: dict[str, Any],
    reason: str,
) -> None:
    orthanc, uids = pacs
    port = free_port()
    dest = commit_dest(mode, port)
    dest.fail, dest.fail_always = {uids[0], uids[1]}, True
    dest.start()
    server, queue = _run(
        tmp_path, make_config, run_proxy, orthanc, Remote(dest.ae_title, "127.0.0.1", dest.port), port, **peer
    )
    seen: set[str] = set()

    def failed() -> bool:
        items = queue.items()
        seen.update(i["state"] for i in items)
        return [i["state"] for i in items] == ["failed"]

    wait_until(failed, 60, "the item failed")
    (item,) = queue.items()
    assert reason in item["error"] and "committing" in seen
    states = _states(server, queue, item["id"])
    if mode == "silent":
        assert states == dict.fromkeys(uids, "unanswered") and len(dest.requests) == 2
    else:  # sent twice (commit_attempts), then left failed
        assert states == {uids[0]: "failed", uids[1]: "failed", uids[2]: "committed"}
        assert Counter(u for u, _ in dest.received) == {uids[0]: 2, uids[1]: 2, uids[2]: 1}


def test_corrected_copies_are_asked_to_commit_under_the_uids_they_were_sent_with(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: tuple[Orthanc, list[str]],
    commit_dest: Callable[..., CommitmentDestination],
) -> None:
    """IOCM (issue 26) to a destination that commits: the corrected copies are journalled under
    the PACS's UIDs but sent under their derived ones; the N-ACTION names the UIDs sent (the SCP
    fails any instance it never received, 0x0112), and its report is recorded against the copies
    job's rows: every copy committed."""
    orthanc, uids = pacs
    port = free_port()
    dest = commit_dest("same", port)
    dest.strict = True
    dest.start()
    server, queue = _run(
        tmp_path,
        make_config,
        run_proxy,
        orthanc,
        Remote(dest.ae_title, "127.0.0.1", dest.port),
        port,
        iocm=True,
    )
    wait_until(lambda: [i["state"] for i in queue.items()] == ["done"], 60, "the item done")
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    later = dt.datetime.now() + dt.timedelta(minutes=5)
    update_rows(
        view, "V_IMAGE_CLOUD", exam_row(SPEC)["ExamineID"], {"PatientID": "PC-NEW", "RowTimestamp": later}
    )
    view.dispose()
    store = CorrectionStore(server.ctx.journal.engine, "test")
    wait_until(
        lambda: store.counts().get((dest.ae_title, "identity-corrected", "done")) == 1, 90, "the correction"
    )
    with server.ctx.journal.engine.connect() as conn:
        (fingerprint,) = conn.execute(select(corrections.c.fingerprint)).scalars()
        copy_jobs = list(
            conn.execute(select(correction_jobs.c.job_id).where(correction_jobs.c.role == COPIES)).scalars()
        )
    copies = sorted(corrected_uid(u, fingerprint) for u in uids)
    ledger = server.ctx.commitments
    assert isinstance(ledger, CommitmentLedger)
    wait_until(
        lambda: ledger.states_of(copy_jobs) == dict.fromkeys(uids, "committed"), 30, "the copies committed"
    )
    assert copies in [sorted(refs) for _, refs in dest.requests]
    assert not any(set(refs) & set(uids) for _, refs in dest.requests[1:])  # never the originals again
