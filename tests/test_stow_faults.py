"""STOW-RS delivery against a server that fails on demand (:mod:`testkit.stowserver`, Starlette on
uvicorn): chosen instances failed with a Failure Reason (permanent and transient), a warning,
429 with Retry-After, 503, a connection dropped mid-request, a final 4xx, a server that never
recovers. Each time the C-MOVE's counts, the journal's rows and what the server stored must agree:
every instance recorded once, nothing lost, nothing stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicomproxy.checks import dicomweb_checks
from dicomproxy.config import Config
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.recovery import retry_job
from dicomproxy.server import Server
from dicomproxy.transport import scu
from testkit import free_port
from testkit.moverig import MoveProxies, move_study
from testkit.samples import StudySpec, write_study
from testkit.stowserver import StowScript, StowServer

CLOUD, WEB = "CLOUD", "WEBCLOUD"
N = 7
BATCH = 3


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("CT", accession="STOW02", series=1, images_per_series=N, seed=43)
    return sorted(write_study(spec, tmp_path_factory.mktemp("stow-faults")))


@pytest.fixture(scope="module")
def uids(study_files: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study_files]


def start_proxy(rig: MoveProxies, files: list[Path], peer: dict[str, Any]) -> Server:
    """A proxy whose PACS is a fake pynetdicom PACS holding ``files`` and whose peers are the
    calling cloud and ``peer``."""
    peers = [{"ae_title": CLOUD, "host": "127.0.0.1", "port": 1}, peer]
    return rig.start(files, peers, proxy={"retries": 3, "retry_delay": 0.05})[1]


def journal_rows(server: Server) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    journal = Journal.for_config("", server.config.data_path)
    try:
        job = journal.recent(1)[0]
        view = journal.get(job["id"], all_instances=True)
        assert view is not None
        return job, view.instances
    finally:
        journal.close()


@pytest.fixture
def run(
    move_proxies: MoveProxies, study_files: list[Path]
) -> Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]]:
    def go(script: StowScript) -> tuple[StowServer, scu.RetrieveSummary, Server]:
        web = StowServer(script).start()
        move_proxies.started.append(web)
        peer = {"ae_title": WEB, "kind": "dicomweb", "url": web.url, "max_batch": BATCH}
        server = start_proxy(move_proxies, study_files, peer)
        return web, move_study(server, WEB, study_files, CLOUD), server

    return go


def test_instances_failed_by_reason_are_counted_and_only_transient_ones_sent_again(
    run: Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]], uids: list[str]
) -> None:
    script = StowScript(
        fail_always={uids[0]: 0xC000, uids[1]: 0xA900},  # cannot understand, does not match: final
        fail_times={uids[2]: (0xA700, 1)},  # out of resources once: sent again, stored
        warn={uids[3]: 0xB000},  # coercion of data elements: stored with a warning
    )
    web, result, server = run(script)
    assert (result.status, result.completed, result.warning, result.failed) == (0xB000, N - 3, 1, 2), (
        result.line()
    )

    assert set(web.stored) == set(uids[2:])  # everything but the two refused, each once
    assert set(web.stored.values()) == {1}
    assert (web.attempts[uids[0]], web.attempts[uids[1]], web.attempts[uids[2]]) == (1, 1, 2)
    for seen in web.seen:  # batches of at most max_batch, each part naming its syntax
        assert 1 <= len(seen.uids) <= BATCH
        assert seen.content_type.startswith('multipart/related; type="application/dicom"; boundary=')
        assert all(media == "application/dicom" and syntax for media, syntax in seen.part_types)
    assert web.mislabelled == 0
    assert max(len(s.uids) for s in web.seen) == BATCH

    job, rows = journal_rows(server)
    assert (job["outcome"], job["completed"], job["warning"], job["failed"]) == ("partial", N - 3, 1, 2)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(uids)  # one row per instance
    by_uid = {r["sop_instance_uid"]: (r["state"], r["status"]) for r in rows}
    assert by_uid[uids[0]] == ("failed", 0xC000)
    assert by_uid[uids[1]] == ("failed", 0xA900)
    assert by_uid[uids[2]] == ("sent", 0x0000)
    assert by_uid[uids[3]] == ("warning", 0xB000)
    assert {by_uid[u] for u in uids[4:]} == {("sent", 0x0000)}


def test_429_and_503_are_waited_out_honouring_retry_after(
    run: Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]], uids: list[str]
) -> None:
    web, result, server = run(StowScript(requests=["429", "503"], retry_after="1"))
    assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
    assert [s.action for s in web.seen[:3]] == ["429", "503", "ok"]
    assert web.seen[1].at - web.seen[0].at >= 0.95  # Retry-After: 1
    assert web.seen[2].at - web.seen[1].at >= 0.95
    assert web.seen[0].uids == web.seen[1].uids == web.seen[2].uids  # the same batch, sent again
    assert set(web.stored) == set(uids) and set(web.stored.values()) == {1}
    job, rows = journal_rows(server)
    assert (job["outcome"], job["completed"], job["failed"]) == ("success", N, 0)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(uids)


def test_a_connection_dropped_mid_request_is_sent_again_and_counted_once(
    run: Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]], uids: list[str]
) -> None:
    web, result, server = run(StowScript(requests=["drop", "ok", "drop"]))
    assert (result.status, result.completed, result.failed) == (0x0000, N, 0), result.line()
    assert [s.action for s in web.seen].count("drop") == 2
    assert set(web.stored) == set(uids) and set(web.stored.values()) == {1}
    job, rows = journal_rows(server)
    assert (job["outcome"], job["completed"], job["failed"]) == ("success", N, 0)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(uids)
    assert {r["state"] for r in rows} == {"sent"}


def test_a_4xx_answer_fails_its_batch_at_once_and_the_rest_goes_on(
    run: Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]], uids: list[str]
) -> None:
    web, result, server = run(StowScript(requests=["400"]))
    first = web.seen[0].uids
    assert web.seen[0].action == "400" and first
    assert (result.status, result.completed, result.failed) == (0xB000, N - len(first), len(first)), (
        result.line()
    )
    assert set(web.stored) == set(uids) - set(first)  # the refused batch is not sent again
    assert all(first != s.uids for s in web.seen[1:])
    job, rows = journal_rows(server)
    assert (job["completed"], job["failed"]) == (N - len(first), len(first))
    failed = {r["sop_instance_uid"] for r in rows if r["state"] == "failed"}
    assert failed == set(first)
    assert {r["status"] for r in rows if r["state"] == "failed"} == {0xC000}


def test_a_server_that_never_answers_fails_the_job_without_losing_count(
    run: Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]], uids: list[str]
) -> None:
    web, result, server = run(StowScript(requests=["503"] * 50, retry_after="0"))
    assert result.completed == 0 and result.failed == N, result.line()
    assert not web.stored
    assert len(web.seen) == 4  # the first batch: 1 + [proxy] retries (3), then the destination is down
    job, rows = journal_rows(server)
    assert (job["outcome"], job["completed"], job["failed"]) == ("failed", 0, N)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(uids)  # each one recorded, none twice


def test_jobs_retry_after_the_server_came_back_sends_each_instance_once(
    run: Callable[[StowScript], tuple[StowServer, scu.RetrieveSummary, Server]], uids: list[str]
) -> None:
    web, result, server = run(StowScript(requests=["503"] * 4, retry_after="0"))  # then "ok" for ever
    assert (result.completed, result.failed) == (0, N), result.line()
    journal = Journal.for_config("", server.config.data_path)
    try:
        job_id = journal.recent(1)[0]["id"]
        retried = retry_job(server.config, journal, job_id, server.ctx.archives)
        assert retried.sent == N and not retried.failed, retried
        assert set(web.stored) == set(uids) and set(web.stored.values()) == {1}
        job = journal.get(job_id)
        assert job is not None
        assert (job.row["outcome"], job.row["completed"], job.row["failed"]) == ("success", N, 0)
        assert journal.confirmed_uids(job_id) == set(uids)
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("auth", "header"),
    [({"token": "t0k3n"}, "Bearer t0k3n"), ({"username": "u", "password": "p"}, "Basic dTpw")],
)
def test_bearer_and_basic_authentication(
    move_proxies: MoveProxies,
    study_files: list[Path],
    uids: list[str],
    auth: dict[str, str],
    header: str,
) -> None:
    good = StowServer(StowScript(authorization=header)).start()
    wrong = StowServer(StowScript(authorization="Bearer another")).start()
    move_proxies.started += [good, wrong]
    for web, ok in ((good, True), (wrong, False)):
        peer = {"ae_title": WEB, "kind": "dicomweb", "url": web.url, "max_batch": BATCH, **auth}
        result = move_study(start_proxy(move_proxies, study_files, peer), WEB, study_files, CLOUD)
        if ok:
            assert (result.completed, result.failed) == (N, 0), result.line()
            assert set(web.stored) == set(uids)
        else:  # 401: final for each instance (0x0124 journalled), never retried
            assert (result.completed, result.failed) == (0, N), result.line()
            assert [s.action for s in web.seen] == ["401"] * len(web.seen) and not web.stored
            assert len(web.seen) == -(-N // BATCH)  # one request per batch, none again


def test_https_with_a_client_certificate(
    move_proxies: MoveProxies, study_files: list[Path], uids: list[str], pki: dict[str, Path]
) -> None:
    server_tls = {"cert": str(pki["server_crt"]), "key": str(pki["server_key"]), "ca": str(pki["ca"])}
    web = StowServer(tls=server_tls).start()
    move_proxies.started.append(web)
    client = {"ca": str(pki["ca"]), "cert": str(pki["client_crt"]), "key": str(pki["client_key"])}
    peer = {"ae_title": WEB, "kind": "dicomweb", "url": web.url, "tls": client}
    result = move_study(start_proxy(move_proxies, study_files, peer), WEB, study_files, CLOUD)
    assert (result.completed, result.failed) == (N, 0), result.line()
    assert set(web.stored) == set(uids)
    # no client certificate: the handshake fails, nothing is stored, every instance failed
    web.stored.clear()
    peer = {"ae_title": WEB, "kind": "dicomweb", "url": web.url, "tls": {"ca": str(pki["ca"])}}
    result = move_study(start_proxy(move_proxies, study_files, peer), WEB, study_files, CLOUD)
    assert (result.completed, result.failed) == (0, N), result.line()
    assert not web.stored


def test_check_config_asks_each_dicomweb_endpoint(
    make_config: Callable[..., Config], pki: dict[str, Path]
) -> None:
    server_tls = {"cert": str(pki["server_crt"]), "key": str(pki["server_key"])}
    plain, https = StowServer().start(), StowServer(tls=server_tls).start()
    try:
        config = make_config(
            peers=[
                {"ae_title": "UP", "kind": "dicomweb", "url": plain.url},
                {"ae_title": "DOWN", "kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/studies"},
                {"ae_title": "TRUSTED", "kind": "dicomweb", "url": https.url, "tls": {"ca": str(pki["ca"])}},
                {"ae_title": "UNTRUSTED", "kind": "dicomweb", "url": https.url},  # the system CAs only
            ]
        )
        results = {r.name: r for r in dicomweb_checks(config, timeout=5)}
        assert [(name, r.ok) for name, r in results.items()] == [
            ("peer UP STOW-RS", True),
            ("peer DOWN STOW-RS", False),
            ("peer TRUSTED STOW-RS", True),
            ("peer UNTRUSTED STOW-RS", False),
        ], results
        assert "405" in results["peer UP STOW-RS"].detail  # the fault server has no QIDO-RS
        assert "ConnectError" in results["peer DOWN STOW-RS"].detail
    finally:
        plain.stop()
        https.stop()
