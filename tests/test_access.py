"""Access control: who may associate, checked with real SCUs (DCMTK echoscu, pynetdicom)."""

from __future__ import annotations

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomproxy.access import REJECT_CALLED_AE, REJECT_CALLING_AE, decide
from dicomproxy.transport.net import Remote, c_echo, guard_requestor
from dicomproxy.transport.pynetdicom_compat import rejection
from testkit import wait_until
from testkit.dcmtk import run_tool


@pytest.mark.parametrize(
    ("calling", "called", "ip", "accept", "rjd"),
    [
        ("jobserver", "DICOMPROXY", "127.0.0.1", True, None),
        ("jobserver ", "DICOMPROXY      ", "127.0.0.1", True, None),
        ("jobserver", "OTHER", "127.0.0.1", False, REJECT_CALLED_AE),
        ("STRANGER", "DICOMPROXY", "127.0.0.1", False, REJECT_CALLING_AE),
        ("jobserver", "DICOMPROXY", "10.9.9.9", False, REJECT_CALLING_AE),
        ("ANYHOST", "DICOMPROXY", "10.9.9.9", True, None),
        ("ORTHANC", "DICOMPROXY", "127.0.0.1", True, None),
        ("ORTHANC", "DICOMPROXY", "10.1.1.1", False, REJECT_CALLING_AE),
        # a host configured by name: any of its addresses (resolved) may connect
        ("NAMED", "DICOMPROXY", "127.0.0.1", True, None),
        ("NAMED", "DICOMPROXY", "10.9.9.9", False, REJECT_CALLING_AE),
        # a host name that does not resolve matches nothing (and raises nothing)
        ("NXHOST", "DICOMPROXY", "127.0.0.1", False, REJECT_CALLING_AE),
    ],
)
def test_decide(make_config, calling: str, called: str, ip: str, accept: bool, rjd: object) -> None:
    cfg = make_config(
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 104},
            {"ae_title": "ANYHOST", "host": "192.0.2.1", "port": 104, "check_host": False},
            {"ae_title": "NAMED", "host": "localhost", "port": 104},
            {"ae_title": "NXHOST", "host": "no-such-host.invalid", "port": 104},
        ]
    )
    decision = decide(cfg, calling, called, ip)
    assert decision.accept is accept
    if rjd is not None:
        assert decision.rjd == rjd and decision.reason


def test_pynetdicom_echo_accepted_and_rejected(
    make_config, run_proxy, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 104},
            {"ae_title": "FARAWAY", "host": "192.0.2.7", "port": 104},
        ]
    )
    server = run_proxy(cfg)
    server.ctx.rejections.window = 0.0  # log every rejection (rate limiting is tested below)
    ok = c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", server.port))
    assert ok.ok, ok.detail
    for calling, called, reason in [
        ("STRANGER", "DICOMPROXY", "calling AE title 'STRANGER' is not a configured peer"),
        ("jobserver", "NOTUS", "called AE title 'NOTUS' is not ours"),
        ("FARAWAY", "DICOMPROXY", "peer 'FARAWAY' must connect from 192.0.2.7"),
    ]:
        caplog.clear()
        result = c_echo(calling, Remote(called, "127.0.0.1", server.port))
        assert not result.ok and "rejected" in result.detail
        assert any(reason in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records)
    # still serving after the rejections
    assert c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", server.port)).ok


@pytest.mark.parametrize(
    ("calling", "called", "expected"),
    [
        # PS3.8 Table 9-21: result 1 rejected-permanent, source 1 service-user, reason 3 / 7
        ("STRANGER", "DICOMPROXY", (1, 1, 3)),
        ("FARAWAY", "DICOMPROXY", (1, 1, 3)),
        ("jobserver", "NOTUS", (1, 1, 7)),
    ],
)
def test_rejection_reasons_on_the_wire(
    make_config, run_proxy, caplog: pytest.LogCaptureFixture, calling: str, called: str, expected
) -> None:
    caplog.set_level("INFO", logger="dicomproxy.server")
    server = run_proxy(
        make_config(
            peers=[
                {"ae_title": "jobserver", "host": "127.0.0.1", "port": 104},
                {"ae_title": "FARAWAY", "host": "192.0.2.7", "port": 104},
            ]
        )
    )
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate("127.0.0.1", server.port, ae_title=called)
        rj = rejection(assoc)  # (pynetdicom may take a fast reject for an abort: pynetdicom_compat)
        assert rj is not None and not assoc.is_established
        assert (rj.result, rj.result_source, rj.diagnostic) == expected
    finally:
        ae.shutdown()
    # our side ends the association there: it is never negotiated, nor logged as accepted
    wait_until(lambda: server.active_associations() == 0, 10, "the rejected association to end")
    assert not [r for r in caplog.records if "association accepted" in r.getMessage()]


@pytest.mark.usefixtures("dcmtk")
def test_dcmtk_echoscu(make_config, run_proxy) -> None:
    server = run_proxy(make_config())
    good = run_tool("echoscu", "-aet", "jobserver", "-aec", "DICOMPROXY", "127.0.0.1", str(server.port))
    assert good.returncode == 0, good.stdout + good.stderr
    bad_calling = run_tool("echoscu", "-aet", "INTRUDER", "-aec", "DICOMPROXY", "127.0.0.1", str(server.port))
    assert bad_calling.returncode != 0
    assert "Calling AE Title Not Recognized" in bad_calling.stdout + bad_calling.stderr
    bad_called = run_tool("echoscu", "-aet", "jobserver", "-aec", "WRONG", "127.0.0.1", str(server.port))
    assert bad_called.returncode != 0
    assert "Called AE Title Not Recognized" in bad_called.stdout + bad_called.stderr


def test_per_peer_services(make_config, run_proxy) -> None:
    from dicomproxy.access import permitted

    cfg = make_config(
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 104},
            {"ae_title": "FINDONLY", "host": "127.0.0.1", "port": 104, "services": ["find"]},
        ]
    )
    assert permitted(cfg, "jobserver", "move") and permitted(cfg, "FINDONLY", "find")
    assert not permitted(cfg, "FINDONLY", "echo") and not permitted(cfg, "ORTHANC", "find")
    server = run_proxy(cfg)
    ae = AE(ae_title="FINDONLY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0124
    assoc.release()
    ae.shutdown()


def test_unknown_service_in_config(make_config) -> None:
    from dicomproxy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"peers\[0\]\.services: unknown service 'store'"):
        make_config(peers=[{"ae_title": "X", "host": "h", "port": 1, "services": ["store"]}])


def test_rejection_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from dicomproxy.access import RejectionLog

    log = RejectionLog(window=3600)
    for _ in range(5):
        log.warn("192.0.2.1", "calling AE title 'X' is not a configured peer")
    log.warn("192.0.2.2", "other")
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 2
    assert not any("more rejection(s)" in line for line in lines)  # nothing was suppressed before them
    log.window = 0.0
    log.warn("192.0.2.1", "again")
    assert "(4 more rejection(s) from this address were not logged)" in caplog.records[-1].getMessage()
    log.warn("192.0.2.1", "and again")
    assert "more rejection(s)" not in caplog.records[-1].getMessage()


def test_rejection_log_one_line_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default window is the documented minute (docs/security.md). A fake clock, no sleeping."""
    from types import SimpleNamespace

    from dicomproxy import access

    now = [5000.0]
    monkeypatch.setattr(access, "time", SimpleNamespace(monotonic=lambda: now[0]))
    log = access.RejectionLog()

    def logged() -> int:
        return len([r for r in caplog.records if "rejected" in r.getMessage()])

    log.warn("192.0.2.9", "scan")
    now[0] += 59.5
    log.warn("192.0.2.9", "scan")
    assert logged() == 1
    now[0] += 0.5  # a minute after the first line: the window is over
    log.warn("192.0.2.9", "scan")
    assert logged() == 2


def test_rejection_log_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A scan from many addresses: past 4096 remembered addresses the log forgets all but the
    current one, which then starts counting from nothing. A fake clock, no sleeping."""
    from types import SimpleNamespace

    from dicomproxy import access

    now = [1000.0]
    monkeypatch.setattr(access, "time", SimpleNamespace(monotonic=lambda: now[0]))
    log = access.RejectionLog(window=60)
    for i in range(4097):
        log.warn(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "scan")
    assert len(log._last) == 1
    last = "10.0.16.0"
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 4097
    now[0] += 1
    log.warn(last, "scan")  # within the window: counted, not logged
    now[0] += 60
    log.warn(last, "scan")
    assert "(1 more rejection(s) from this address" in caplog.records[-1].getMessage()
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 4098


def test_find_not_permitted(make_config, run_proxy, sqlite_view) -> None:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    cfg = make_config(
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 104},
            {"ae_title": "ECHOONLY", "host": "127.0.0.1", "port": 104, "services": ["echo"]},
        ]
    )
    server = run_proxy(cfg)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = "A0001"
    query.StudyInstanceUID = ""
    results = {}
    for calling in ("jobserver", "ECHOONLY"):
        ae = AE(ae_title=calling)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
        guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
        assert assoc.is_established
        results[calling] = [
            s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ]
        assoc.release()
        ae.shutdown()
    assert results["jobserver"] == [0xFF00, 0x0000]
    assert results["ECHOONLY"] == [0x0124]


def test_move_and_get_not_permitted(make_config, run_proxy, sqlite_view) -> None:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    cfg = make_config(
        peers=[{"ae_title": "FINDONLY", "host": "127.0.0.1", "port": 104, "services": ["find"]}]
    )
    server = run_proxy(cfg)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = "A0001"
    ae = AE(ae_title="FINDONLY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established
    move = [
        s.Status for s, _ in assoc.send_c_move(query, "FINDONLY", StudyRootQueryRetrieveInformationModelMove)
    ]
    get = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    ae.shutdown()
    assert move == [0x0124] and get == [0x0124]
