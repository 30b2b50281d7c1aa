"""The raw C-FIND/C-ECHO acceptor (dicomproxy.transport.raw.queries, issue 29) against pynetdicom's
path in the same process: which associations it takes, the same answers byte for byte and the same
statuses, C-CANCEL, PDV fragmentation for a small Maximum Length, the association limit, protocol
errors. Real peers: pynetdicom SCUs and DCMTK findscu/echoscu, a SQLite view.

The rest of the C-FIND suite (test_find_view.py on three databases, test_find_charsets.py,
test_find_pacs.py, test_access.py) runs through the raw acceptor too: its clients propose C-FIND
contexts only."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport.net import guard_requestor
from dicomproxy.transport.pynetdicom_compat import rejection
from dicomproxy.transport.raw.pdu import PduReader
from dicomproxy.transport.raw.queries import claims
from tests.conftest import FIND_PEERS, ConfigFactory
from tests.view_data import CT, FindClient, FindResult, fill_view

MOVE = StudyRootQueryRetrieveInformationModelMove


@pytest.fixture
def config(sqlite_url: str, make_config: ConfigFactory) -> Config:
    fill_view(sqlite_url)
    peers = [*FIND_PEERS, {"ae_title": "ECHOONLY", "host": "127.0.0.1", "port": 1, "services": ["echo"]}]
    return make_config(peers=peers)


@pytest.fixture(params=["in process", "query process"])
def proxy(
    request: pytest.FixtureRequest,
    config: Config,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
) -> Server:
    """The raw acceptor in the serving process, or in its query process (dicomproxy.queryproc)."""
    if request.param == "in process":
        return run_proxy(config)
    server = run_proxy(make_config(proxy={"query_process": True}, peers=config_peers(config)))
    assert server.queries is not None and server.queries.wait_ready(30)
    return server


def config_peers(config: Config) -> list[dict[str, Any]]:
    return [
        {"ae_title": p.ae_title, "host": p.host, "port": p.port, "services": list(p.services)}
        for p in config.peers
    ]


def raw_via(server: Server) -> str:
    """How :meth:`Server.association_list` names the raw acceptor's associations."""
    return "query process" if server.queries is not None else "raw query"


def logged(caplog: pytest.LogCaptureFixture, part: str) -> list[str]:
    """The captured lines holding ``part``, once there is one (a query process's records reach this
    process's logging through its channel, a moment after the peer saw the A-ABORT), or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        lines = [r.getMessage() for r in caplog.records if part in r.getMessage()]
        if lines or time.monotonic() > deadline:
            time.sleep(0.1)  # a second line, if one were coming, arrives with the first
            return [r.getMessage() for r in caplog.records if part in r.getMessage()]
        time.sleep(0.02)


def kinds(server: Server, expected: list[str]) -> list[str]:
    """The open associations' kinds, once they are ``expected`` (an association released just
    before may take a moment to end on the proxy's side), or as they are after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        now = sorted(f"{a['calling_ae']} via {a['via']}" for a in server.association_list())
        if now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


# --- which associations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("syntaxes", "raw"),
    [
        ({Verification}, True),
        ({StudyRootQueryRetrieveInformationModelFind}, True),
        (
            {
                Verification,
                StudyRootQueryRetrieveInformationModelFind,
                PatientRootQueryRetrieveInformationModelFind,
            },
            True,
        ),
        ({StudyRootQueryRetrieveInformationModelFind, MOVE}, False),
        ({StudyRootQueryRetrieveInformationModelFind, "1.2.840.10008.5.1.4.1.1.2"}, False),  # CT storage
        (set(), False),
        (None, False),  # only the fixed fields were read (a very large A-ASSOCIATE-RQ)
    ],
)
def test_claims(syntaxes: set[str] | None, raw: bool) -> None:
    assert claims(None if syntaxes is None else frozenset(syntaxes)) is raw


def test_a_find_only_association_is_served_raw_one_that_may_move_by_pynetdicom(proxy: Server) -> None:
    with FindClient(proxy.port) as client:
        assert kinds(proxy, [f"jobserver via {raw_via(proxy)}"]) == [f"jobserver via {raw_via(proxy)}"]
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}
    with FindClient(proxy.port, also=(MOVE,)) as client:
        assert kinds(proxy, ["jobserver via pynetdicom"]) == ["jobserver via pynetdicom"]
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}
    deadline = time.monotonic() + 5
    while proxy.active_associations() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.active_associations() == 0


def test_without_the_fast_path_pynetdicom_serves_every_association(
    config: Config, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    """``[proxy] fast_path = false`` turns both raw acceptors off (docs/configuration.md)."""
    server = run_proxy(make_config(proxy={"fast_path": False}, peers=FIND_PEERS))
    assert server.query_acceptor is None
    with FindClient(server.port) as client:
        assert kinds(server, ["jobserver via pynetdicom"]) == ["jobserver via pynetdicom"]
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}


# --- the same answers both ways ----------------------------------------------------------------

#: (keys, level, model, charset): answers, failures and charset conversions of the C-FIND suite.
QUERIES: list[tuple[dict[str, Any], str, str, Any]] = [
    ({"StudyInstanceUID": "", "PatientID": "", "PatientName": "", "StudyDate": ""}, "STUDY", "STUDY", None),
    (
        {"PatientID": "P0001", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""},
        "STUDY",
        "STUDY",
        None,
    ),
    ({"AccessionNumber": "A000*", "StudyDescription": ""}, "STUDY", "STUDY", None),
    ({"PatientName": "王*", "PatientID": ""}, "STUDY", "STUDY", "ISO_IR 192"),
    ({"PatientName": "王*", "PatientID": ""}, "STUDY", "STUDY", "GB18030"),
    ({"PatientID": "P0001", "PatientName": ""}, "PATIENT", "PATIENT", None),
    ({"AccessionNumber": "NO-SUCH"}, "STUDY", "STUDY", None),
    ({"PatientID": "P0001", "StudyDate": "2020-01-01"}, "STUDY", "STUDY", None),  # not a DA range
    ({"PatientID": "P0001"}, "NOSUCHLEVEL", "STUDY", None),  # bad level
]


def results(client: FindClient) -> list[tuple[int, str | None, list[bytes]]]:
    out = []
    for keys, level, model, charset in QUERIES:
        result: FindResult = client.find(keys, level=level, model=model, charset=charset)
        out.append((result.status, result.comment, list(client.wire)))
    return out


@pytest.mark.parametrize("max_pdu", [None, 64])
def test_the_same_answers_byte_for_byte_as_pynetdicom_s(proxy: Server, max_pdu: int | None) -> None:
    """64: every answer and command longer than 58 bytes reaches the client in several PDVs (PS3.8 9.3.5)."""
    pdv_sizes: list[int] = []

    def on_pdu(event: Any) -> None:
        for item in getattr(event.pdu, "presentation_data_value_items", []):
            pdv_sizes.append(len(item.presentation_data_value) - 1)  # minus the control header byte

    with FindClient(proxy.port, max_pdu=max_pdu) as client:
        assert kinds(proxy, [f"jobserver via {raw_via(proxy)}"]) == [f"jobserver via {raw_via(proxy)}"]
        client.assoc.bind(evt.EVT_PDU_RECV, on_pdu)
        raw = results(client)
    with FindClient(proxy.port, also=(MOVE,), max_pdu=max_pdu) as client:
        assert kinds(proxy, ["jobserver via pynetdicom"]) == ["jobserver via pynetdicom"]
        reference = results(client)
    assert raw == reference
    statuses = [status for status, _comment, _wire in raw]
    assert statuses.count(0x0000) >= 7 and 0xA900 in statuses  # the table has answers and failures
    assert sum(len(wire) for _status, _comment, wire in raw) > 10
    if max_pdu:
        assert min(len(b) for _s, _c, wire in raw for b in wire) > 58
        assert pdv_sizes and max(pdv_sizes) <= 58  # what we announced, not the proxy's default
    else:
        assert max(pdv_sizes) > 58


def test_a_peer_without_find_gets_not_authorized_and_echo_both_ways(proxy: Server) -> None:
    for also in ((), (MOVE,)):
        with FindClient(proxy.port, calling="ECHOONLY", also=also) as client:
            result = client.find({"PatientID": "P0001"})
            assert (result.status, result.answers) == (0x0124, [])
    ae = AE("ECHOONLY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="DICOMPROXY")
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established and kinds(proxy, [f"ECHOONLY via {raw_via(proxy)}"]) == [
        f"ECHOONLY via {raw_via(proxy)}"
    ]
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()
    ae.shutdown()


# --- DCMTK -------------------------------------------------------------------------------------


def test_dcmtk_findscu_and_echoscu(proxy: Server, dcmtk: None) -> None:
    port = str(proxy.port)
    echo = subprocess.run(
        ["echoscu", "-aet", "jobserver", "-aec", "DICOMPROXY", "127.0.0.1", port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    find = subprocess.run(
        [
            *("findscu", "-v", "-S", "-aet", "jobserver", "-aec", "DICOMPROXY", "--max-pdu", "4096"),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=P0001", "-k", "StudyInstanceUID"),
            *("127.0.0.1", port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert find.returncode == 0, find.stderr
    out = find.stdout + find.stderr
    assert out.count("Find Response: ") == 2 and out.count("(Pending)") == 2, out  # the two studies
    assert "Final Find Response (Success)" in out, out


# --- C-CANCEL, limits, protocol errors ---------------------------------------------------------


def test_the_association_limit_counts_raw_associations(
    config: Config, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    limited = make_config(proxy={"maximum_associations": 1}, peers=FIND_PEERS)  # the view `config` filled
    server = run_proxy(limited)
    with FindClient(server.port) as first:
        ae = AE("jobserver")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        second = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
        assert rejection(second) is not None and not second.is_established
        ae.shutdown()
        assert first.uids(AccessionNumber=CT.accession) == {CT.study_uid}


def test_a_command_the_association_was_not_negotiated_for_is_aborted(
    proxy: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A C-ECHO-RQ on the C-FIND context (no Verification context proposed): A-ABORT, one log line,
    and the next association is served."""
    caplog.set_level(logging.WARNING, logger="dicomproxy.fastpath")
    with FindClient(proxy.port) as client:
        echo = C_ECHO()
        echo.MessageID = 3
        echo.AffectedSOPClassUID = Verification
        client.assoc.dimse.send_msg(echo, client.assoc.accepted_contexts[0].context_id)
        deadline = time.monotonic() + 5
        while client.assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.assoc.is_aborted
    lines = logged(caplog, "query association")
    assert len(lines) == 1 and "aborted: command 0x0030" in lines[0], lines
    with FindClient(proxy.port) as client:
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}


def test_garbage_after_the_association_is_aborted_not_fatal(proxy: Server) -> None:
    """A P-DATA-TF whose PDV does not fit its PDU: the acceptor aborts; the process goes on."""
    ae = AE("jobserver")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="DICOMPROXY")
    assert assoc.is_established
    sock = assoc.dul.socket.socket
    sock.sendall(bytes([0x04, 0]) + (12).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"\x01\x03xxxxxx")
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted
    ae.shutdown()
    with FindClient(proxy.port) as client:
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}


# --- PduReader.waiting (unit) ------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_waiting_sees_buffered_bytes_the_socket_no_longer_shows(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    reader = PduReader(a)
    assert not reader.waiting()
    b.sendall(b"0123456789")
    assert reader.waiting()
    assert reader.read_exact(4) == b"0123"  # the other 6 bytes now sit in the reader's buffer
    assert reader.waiting()
    assert reader.read_exact(6) == b"456789"
    assert not reader.waiting()
    assert a.gettimeout() == 5  # restored
    b.close()
    assert reader.waiting()  # the peer's close: a read would not block (it ends the association)


def _send_on(client: FindClient, primitive: Any, abstract_syntax: str) -> None:
    """Send ``primitive`` on the accepted context of ``abstract_syntax`` (not the one it belongs to)."""
    context_id = next(
        cx.context_id for cx in client.assoc.accepted_contexts if cx.abstract_syntax == abstract_syntax
    )
    client.assoc.dimse.send_msg(primitive, context_id)


def _aborted(client: FindClient) -> bool:
    deadline = time.monotonic() + 5
    while client.assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(client.assoc.is_aborted)


@pytest.mark.parametrize(
    "case", ["move-on-find-context", "find-on-verification-context", "find-without-identifier"]
)
def test_a_request_the_context_does_not_allow_is_aborted(
    proxy: Server, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.7: a C-FIND-RQ belongs on a FIND context and carries an identifier; a C-MOVE-RQ (with its
    identifier) is no C-FIND however it arrives. Each: A-ABORT and one log line, the process goes on."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_FIND, C_MOVE
    from pynetdicom.dsutils import encode

    caplog.set_level(logging.WARNING, logger="dicomproxy.fastpath")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = CT.accession
    identifier = BytesIO(encode(query, False, True))
    with FindClient(proxy.port, also=(Verification,)) as client:
        assert kinds(proxy, [f"jobserver via {raw_via(proxy)}"]) == [f"jobserver via {raw_via(proxy)}"]
        if case == "move-on-find-context":
            move = C_MOVE()
            move.MessageID, move.AffectedSOPClassUID = 5, StudyRootQueryRetrieveInformationModelFind
            move.MoveDestination, move.Identifier = "DEST", identifier
            _send_on(client, move, StudyRootQueryRetrieveInformationModelFind)
        else:
            find = C_FIND()
            find.MessageID, find.AffectedSOPClassUID = 5, StudyRootQueryRetrieveInformationModelFind
            find.Identifier = identifier if case == "find-on-verification-context" else None
            where = (
                Verification
                if case == "find-on-verification-context"
                else StudyRootQueryRetrieveInformationModelFind
            )
            _send_on(client, find, where)
        assert _aborted(client)
    lines = logged(caplog, "query association")
    assert len(lines) == 1 and "aborted: command 0x00" in lines[0], lines
    with FindClient(proxy.port) as client:
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}


def test_error_comments_are_cut_to_64_characters_and_absent_when_empty() -> None:
    """The Error Comment (0000,0902) is LO, at most 64 characters (PS3.7 Annex C); a failure whose
    status data set has none gets no element. Unit level: the acceptor with a stand-in C-FIND."""
    from pynetdicom import build_context

    from dicomproxy.transport.raw.queries import QueryAcceptor

    long = "x" * 60 + "0123456789"

    def on_find(request: Any, cancelled: Callable[[], bool]) -> Iterator[tuple[Any, Dataset | None]]:
        status = Dataset()
        status.Status = 0xC000 if request.message_id == 1 else 0xC001
        if request.message_id == 1:
            status.ErrorComment = long
        yield status, None

    acceptor = QueryAcceptor(
        supported=[build_context(StudyRootQueryRetrieveInformationModelFind)],
        max_pdu=0,
        gate=lambda calling, called, ip: None,
        on_find=on_find,
        on_echo=lambda calling: 0,
        acse_timeout=5,
        network_timeout=5,
    )
    server = socket.create_server(("127.0.0.1", 0))
    served: list[None] = []

    def serve() -> None:
        conn, address = server.accept()
        acceptor.serve(conn, address)
        conn.close()
        served.append(None)

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ae = AE("jobserver")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.getsockname()[1], ae_title="DICOMPROXY")
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    try:
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        finals = []
        for msg_id in (1, 2):
            finals.extend(
                status
                for status, _ds in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind, msg_id=msg_id
                )
            )
        assert [int(s.Status) for s in finals] == [0xC000, 0xC001]
        assert finals[0].ErrorComment == long[:64]
        assert "ErrorComment" not in finals[1]
        assoc.release()
    finally:
        ae.shutdown()
        thread.join(5)
        server.close()
    assert served
