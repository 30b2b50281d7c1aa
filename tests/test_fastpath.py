"""The raw-socket data path (dicomproxy.transport.raw): PDU framing, the store acceptor against real
peers (DCMTK storescu, a pynetdicom client misbehaving mid data set), and the relay with
``[proxy] fast_path`` on and off."""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF as PynetdicomPDataTF
from pynetdicom.presentation import build_context as presentation_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import create_engine

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.relay import forward
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.raw import pdu, wire
from dicomproxy.transport.raw import sender as fastsender
from dicomproxy.transport.raw.requestor import RawAssociation
from testkit import free_port, wait_until
from testkit.dcmtk import DcmQrSCP, StoreSCP, run_tool
from testkit.samples import demo_specs, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows

CT, MR, _, _ = demo_specs()
PROXY_AE = "DICOMPROXY"
ARCHIVE = "ARCHIVE"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

# --- framing ------------------------------------------------------------------------------------


def parse_pdus(stream: bytes) -> list[tuple[int, int, bytes]]:
    """Every PDV of a byte stream of P-DATA-TF PDUs, as (context ID, control header, value),
    checking PS3.8 9.3.5 framing on the way (one PDV per PDU, as message_pdus writes them)."""
    out = []
    i = 0
    while i < len(stream):
        pdu_type, length = pdu.PDU_HEADER.unpack_from(stream, i)
        assert pdu_type == pdu.P_DATA_TF
        body = stream[i + 6 : i + 6 + length]
        assert len(body) == length, "truncated PDU"
        item, context_id, control = pdu.PDV_HEADER.unpack_from(body, 0)
        assert item + 4 == length, "exactly one PDV filling the PDU"
        assert control & ~0x03 == 0, "reserved control bits are zero"
        out.append((context_id, control, body[6 : 4 + item]))
        i += 6 + length
    return out


def frame(context_id: int, command: bytes, data: bytes | None, max_pdv: int) -> bytes:
    source = io.BytesIO(data) if data is not None else None
    batches = list(pdu.message_pdus(context_id, command, source, len(data or b""), max_pdv))
    assert all(batches), "no empty batch"
    return b"".join(batches)


def check_message(pdvs: list[tuple[int, int, bytes]], context_id: int, max_pdv: int) -> tuple[bytes, bytes]:
    """The command and data set reassembled, after checking the control bits of each fragment."""
    commands = [p for p in pdvs if p[1] & pdu.CONTROL_COMMAND]
    data = [p for p in pdvs if not p[1] & pdu.CONTROL_COMMAND]
    assert pdvs[: len(commands)] == commands, "the command comes first, never interleaved"
    for fragments in (commands, data):
        # exactly the final fragment of each has bit 1 (last) set
        assert [bool(c & pdu.CONTROL_LAST) for _, c, _ in fragments] == [False] * (len(fragments) - 1) + [
            True
        ] * bool(fragments)
    assert all(cx == context_id for cx, _, _ in pdvs)
    assert all(0 < len(v) <= max_pdv for _, _, v in pdvs), "no empty or oversized PDV"
    return b"".join(v for _, _, v in commands), b"".join(v for _, _, v in data)


def a_command() -> bytes:
    return wire.encode_command(fastsender.store_command(7, CT_IMAGE, "1.2.3.4.5.6.7.8.9", ("CLOUD", 42)))


MAX_PDVS = [16, 1000, 16378, fastsender.DEFAULT_MAX_PDV]


def _lengths(max_pdv: int) -> list[int]:
    sizes = {1, max_pdv - 1, max_pdv, max_pdv + 1, 2 * max_pdv + 3}
    if max_pdv >= 1000:
        sizes |= {3 * 1024 * 1024 + 7, pdu.READ_CHUNK, pdu.READ_CHUNK + 1}
    return sorted(s for s in sizes if s > 0)


@pytest.mark.parametrize(
    ("max_pdv", "length"),
    [(m, n) for m in MAX_PDVS for n in _lengths(m)],
    ids=lambda v: str(v),
)
def test_message_pdus_framing(max_pdv: int, length: int) -> None:
    command = a_command()
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))
    stream = frame(5, command, data, max_pdv)
    cmd, got = check_message(parse_pdus(stream), 5, max_pdv)
    assert cmd == command
    assert got == data
    assert len(parse_pdus(stream)) == -(-len(command) // max_pdv) + -(-length // max_pdv)


@pytest.mark.parametrize("max_pdv", MAX_PDVS)
def test_message_pdus_command_only(max_pdv: int) -> None:
    """No data set (a C-ECHO-RQ, a response): command fragments only, the last one marked."""
    command = a_command()
    pdvs = parse_pdus(frame(1, command, None, max_pdv))
    cmd, data = check_message(pdvs, 1, max_pdv)
    assert (cmd, data) == (command, b"")
    assert all(c & pdu.CONTROL_COMMAND for _, c, _ in pdvs)


def test_message_pdus_refuses_empty_or_short_data() -> None:
    with pytest.raises(ValueError, match="empty data set"):
        list(pdu.message_pdus(1, a_command(), io.BytesIO(b""), 0, 1000))
    with pytest.raises(ValueError, match="ended 5 bytes early"):
        list(pdu.message_pdus(1, a_command(), io.BytesIO(b"x" * 10), 15, 1000))


def test_message_pdus_read_by_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's own decoder (the one the destination side of a pynetdicom peer runs)
    reassembles our PDUs into the same C-STORE-RQ and data set."""
    from pynetdicom import _config

    # in memory: a server built by an earlier test switched received data sets to files
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    command = a_command()
    data = bytes(range(256)) * 300  # 76,800 bytes over several PDUs
    stream = frame(3, command, data, 16378)
    msg = C_STORE_RQ()
    done = False
    i = 0
    while i < len(stream):
        _, length = pdu.PDU_HEADER.unpack_from(stream, i)
        tf = PynetdicomPDataTF()
        tf.decode(stream[i : i + 6 + length])
        done = msg.decode_msg(tf.to_primitive())
        i += 6 + length
    assert done
    assert msg.context_id == 3
    assert msg.command_set.MessageID == 7
    assert msg.command_set.AffectedSOPInstanceUID == "1.2.3.4.5.6.7.8.9"
    assert msg.command_set.MoveOriginatorApplicationEntityTitle == "CLOUD"
    assert msg.command_set.MoveOriginatorMessageID == 42
    assert msg.data_set.getvalue() == data


def _pynetdicom_store_rq() -> C_STORE_RQ:
    prim = C_STORE()
    prim.MessageID = 7
    prim.AffectedSOPClassUID = CT_IMAGE
    prim.AffectedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    prim.Priority = 0
    prim.MoveOriginatorApplicationEntityTitle = "CLOUD"
    prim.MoveOriginatorMessageID = 42
    prim.DataSet = io.BytesIO(b"\x00" * 8)
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    return msg


def test_encode_command_matches_pynetdicom() -> None:
    """(0000,0000) Command Group Length and the whole encoding equal pynetdicom's for the same
    command set; our C-STORE-RQ differs from pynetdicom's only in (0000,0800) Command Data Set
    Type, whose value just has to be other than 0x0101 (PS3.7 E.1)."""
    from pynetdicom.dsutils import encode

    reference = _pynetdicom_store_rq()
    ref_bytes = encode(reference.command_set, True, True)
    assert wire.encode_command({e.keyword: e.value for e in reference.command_set}) == ref_bytes

    ours = fastsender.store_command(7, CT_IMAGE, "1.2.3.4.5.6.7.8.9", ("CLOUD", 42))
    raw = wire.encode_command(ours)
    decoded = wire.decode_command(raw)
    assert decoded.CommandGroupLength == len(raw) - 12 == reference.command_set.CommandGroupLength
    assert decoded.CommandDataSetType != 0x0101
    for elem in reference.command_set:
        if elem.keyword != "CommandDataSetType":
            assert decoded[elem.keyword] == elem.value, elem.keyword
    assert set(decoded) == {e.keyword for e in reference.command_set}


def test_encode_decode_round_trip_response() -> None:
    """A C-STORE-RSP as the receiver writes it: what pynetdicom would encode, and it reads back."""
    rsp = Dataset()
    rsp.AffectedSOPClassUID = CT_IMAGE
    rsp.CommandField = 0x8001
    rsp.MessageIDBeingRespondedTo = 9
    rsp.CommandDataSetType = 0x0101
    rsp.Status = 0xC000
    rsp.AffectedSOPInstanceUID = "1.2.3"
    raw = wire.encode_command({e.keyword: e.value for e in rsp})
    from pynetdicom.dsutils import encode

    assert raw[12:] == encode(rsp, True, True)  # after (0000,0000): the bytes pydicom writes
    back = wire.decode_command(raw)
    assert {k: v for k, v in back.items() if k != "CommandGroupLength"} == {e.keyword: e.value for e in rsp}
    assert back.CommandGroupLength == len(raw) - 12
    msg = C_STORE_RSP()
    tf = PynetdicomPDataTF()
    tf.decode(pdu.pdata(1, pdu.CONTROL_COMMAND | pdu.CONTROL_LAST, raw))
    assert msg.decode_msg(tf.to_primitive())
    assert (msg.command_set.Status, msg.command_set.MessageIDBeingRespondedTo) == (0xC000, 9)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00\x00\x04\x00\x00\x00\x10",  # value cut short
        b"\x00\x00\x00\x00\x04\x00",  # element header cut short
        b"\x08\x00\x18\x00\x02\x00\x00\x001.",  # not group 0000
    ],
    ids=["short-value", "short-header", "wrong-group"],
)
def test_decode_command_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValueError):
        wire.decode_command(raw)


def test_file_meta_matches_pydicom() -> None:
    """The preamble + File Meta Information we write in front of a received data set are the
    bytes pydicom writes for the same values (PS3.10 7.1)."""
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    for sop_uid in ("1.2.3.4", "1.2.3.45"):  # even and odd length: padding
        meta = create_file_meta(
            sop_class_uid=CT_IMAGE, sop_instance_uid=sop_uid, transfer_syntax="1.2.840.10008.1.2.4.80"
        )
        expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
        assert wire.file_preamble_and_meta(CT_IMAGE, sop_uid, "1.2.840.10008.1.2.4.80") == expected


# --- the store acceptor, against real peers -----------------------------------------------------


@pytest.fixture
def archive_proxy(make_config: Callable[..., Config], run_proxy: Callable[[Config], Server]) -> Server:
    """A proxy whose [pacs] is ARCHIVE at 127.0.0.1 (so its store associations take the fast path)."""
    config = make_config(pacs={"ae_title": ARCHIVE, "host": "127.0.0.1", "port": 1})
    server = run_proxy(config)
    assert server.store_acceptor is not None
    return server


def incoming(server: Server) -> list[Path]:
    return sorted((server.config.data_path / "incoming").iterdir())


def fastpath_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dicomproxy.fastpath" and r.levelno >= logging.WARNING
    ]


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(CT, tmp_path_factory.mktemp("fastpath-ct"))


@pytest.mark.usefixtures("dcmtk")
def test_archive_store_without_retrieval_is_refused(
    archive_proxy: Server, ct_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """DCMTK storescu as the archive, no retrieval active: the raw acceptor takes the association
    and answers every C-STORE 0xC000; nothing stays in data_dir/incoming."""
    caplog.set_level(logging.INFO, logger="dicomproxy")
    result = run_tool(
        "storescu", "-v", "-nh", "-aet", ARCHIVE, "-aec", PROXY_AE, "127.0.0.1", str(archive_proxy.port),
        *map(str, ct_files),
    )  # fmt: skip
    out = result.stdout + result.stderr
    # -nh: go on after an unsuccessful store, so each file gets its own response
    assert out.count("Received Store Response (Error: CannotUnderstand)") == len(ct_files), out
    assert "Store Response (Success" not in out, out
    assert incoming(archive_proxy) == []
    accepted = [r for r in caplog.records if r.getMessage().startswith("store association accepted: ARCHIVE")]
    assert len(accepted) == 1, "served by dicomproxy.transport.raw.receiver"
    refused = [r for r in caplog.records if "belongs to no active retrieval" in r.getMessage()]
    assert len(refused) == len(ct_files)
    assert fastpath_problems(caplog) == []
    assert c_echo(ARCHIVE, Remote(PROXY_AE, "127.0.0.1", archive_proxy.port)).ok  # C-ECHO on the fast path


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [
        ("NOBODY", PROXY_AE, "Calling AE Title Not Recognized"),  # pynetdicom's EVT_REQUESTED
        # claimed by the raw acceptor (calling AE is the archive's), refused by its gate
        (ARCHIVE, "SOMEONEELSE", "Called AE Title Not Recognized"),
    ],
    ids=["unknown-calling-ae", "archive-wrong-called-ae"],
)
def test_store_association_rejected(
    archive_proxy: Server, ct_files: list[Path], calling: str, called: str, reason: str
) -> None:
    result = run_tool(
        "storescu",
        "-v",
        "-aet",
        calling,
        "-aec",
        called,
        "127.0.0.1",
        str(archive_proxy.port),
        str(ct_files[0]),
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Association Rejected" in out, out
    assert reason.lower() in out.lower(), out
    assert incoming(archive_proxy) == []
    assert c_echo("jobserver", Remote(PROXY_AE, "127.0.0.1", archive_proxy.port)).ok


def _open_as_archive(port: int) -> tuple[AE, Any, int]:
    ae = AE(ae_title=ARCHIVE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=PROXY_AE)
    assert assoc.is_established
    return ae, assoc, int(assoc.accepted_contexts[0].context_id)


def _garbage(assoc: Any, sock: Any, cx: int) -> None:
    sock.sendall(b"\x09\x00\x00\x00\x00\x04GARB")  # PDU type 0x09 does not exist (PS3.8 9.3.1)


def _bad_pdv(assoc: Any, sock: Any, cx: int) -> None:
    sock.sendall(pdu.PDATA_ONE_PDV.pack(pdu.P_DATA_TF, 10, 400, cx, 0) + b"\x00" * 4)  # PDV > PDU


def _abort(assoc: Any, sock: Any, cx: int) -> None:
    assoc.abort()


def _close(assoc: Any, sock: Any, cx: int) -> None:
    import socket

    sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(
    "misbehave",
    [_garbage, _bad_pdv, _abort, _close],
    ids=["garbage-pdu", "pdv-overruns-pdu", "a-abort", "tcp-close"],
)
def test_archive_breaks_off_mid_data_set(
    archive_proxy: Server, caplog: pytest.LogCaptureFixture, misbehave: Callable[..., None]
) -> None:
    """A pynetdicom client associated as the archive sends a C-STORE-RQ and part of its data set,
    then misbehaves: the proxy logs one line, removes the half-written file, keeps serving."""
    caplog.set_level(logging.INFO, logger="dicomproxy")
    acceptor = archive_proxy.store_acceptor
    ae, assoc, cx = _open_as_archive(archive_proxy.port)
    try:
        sock = assoc.dul.socket.socket
        command = wire.encode_command(fastsender.store_command(1, CT_IMAGE, "1.2.3.4", None))
        sock.sendall(pdu.pdata(cx, pdu.CONTROL_COMMAND | pdu.CONTROL_LAST, command))
        sock.sendall(pdu.pdata(cx, 0, b"\x08\x00\x16\x00" + b"\x00" * 5000))  # a first, not last, fragment
        wait_until(lambda: len(incoming(archive_proxy)) == 1, 10, "the half-received file")
        misbehave(assoc, sock, cx)
        wait_until(lambda: acceptor.active == 0 and fastpath_problems(caplog) != [], 10, "the session's end")
        if misbehave in (_garbage, _bad_pdv):  # a protocol error: the proxy answers with A-ABORT
            wait_until(lambda: assoc.is_aborted, 10, "the A-ABORT from the proxy")
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    assert len(fastpath_problems(caplog)) == 1, fastpath_problems(caplog)
    assert incoming(archive_proxy) == []
    proxy = Remote(PROXY_AE, "127.0.0.1", archive_proxy.port)
    assert c_echo("jobserver", proxy).ok
    assert c_echo(ARCHIVE, proxy).ok  # the fast path serves the next archive association


class _Collect:
    """An InstanceSink keeping what it is handed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.got: dict[str, tuple[Path, str, str]] = {}

    def accept(self, src: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bool:
        dst = self.root / f"{sop_instance_uid}.dcm"
        shutil.move(src, dst)
        self.got[sop_instance_uid] = (dst, sop_class_uid, transfer_syntax)
        return True

    def wait_for_room(self) -> float:
        return 0.0  # no disk to watch


def test_archive_store_during_retrieval_is_kept_intact(
    archive_proxy: Server, ct_files: list[Path], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """With a retrieval active, the raw acceptor hands each instance to it, byte for byte: one
    sent by pynetdicom's ``send_c_store`` (one PDV per PDU) and one whose command and data set
    fragments share P-DATA-TF PDUs (several PDVs per PDU, PS3.8 9.3.5 allows it)."""
    from pynetdicom.dsutils import split_dataset

    from dicomproxy.pacs.store import ActiveRetrieval
    from dicomproxy.transport.net import guard_requestor

    caplog.set_level(logging.INFO, logger="dicomproxy")
    first, second = ct_files[0], ct_files[1]
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in (first, second)}
    sink = _Collect(tmp_path / "sink")
    registry = archive_proxy.ctx.relay.registry  # type: ignore[union-attr]
    retrieval = registry.open(ActiveRetrieval(sink, frozenset({CT.study_uid}), frozenset(uids)))
    ae, assoc, cx = _open_as_archive(archive_proxy.port)
    try:
        guard_requestor(assoc)  # responses are ours to read, not the reactor's
        status = assoc.send_c_store(first)
        assert status.Status == 0x0000
        # the second by hand: [last command fragment + first data fragment], [two data fragments]
        meta, offset = split_dataset(second)
        data = second.read_bytes()[offset:]
        command = wire.encode_command(
            fastsender.store_command(2, CT_IMAGE, str(meta.MediaStorageSOPInstanceUID), None)
        )
        a, b = len(data) // 3, 2 * len(data) // 3

        def pdv(control: int, value: bytes) -> bytes:
            return pdu.PDV_HEADER.pack(len(value) + 2, cx, control) + value

        def pdata_tf(*pdvs: bytes) -> bytes:
            body = b"".join(pdvs)
            return pdu.PDU_HEADER.pack(pdu.P_DATA_TF, len(body)) + body

        sock = assoc.dul.socket.socket
        sock.sendall(
            pdata_tf(pdv(pdu.CONTROL_COMMAND | pdu.CONTROL_LAST, command), pdv(0, data[:a]))
            + pdata_tf(pdv(0, data[a:b]), pdv(pdu.CONTROL_LAST, data[b:]))
        )
        _, rsp = assoc.dimse.get_msg(block=True)
        assert rsp is not None and rsp.Status == 0x0000 and rsp.MessageIDBeingRespondedTo == 2
        assoc.release()
    finally:
        registry.close(retrieval)
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    assert set(sink.got) == set(uids)
    for uid, (path, sop_class, syntax) in sink.got.items():
        original = uids[uid]
        assert (
            path.read_bytes()[split_dataset(path)[1] :] == original.read_bytes()[split_dataset(original)[1] :]
        )
        assert (sop_class, syntax) == (CT_IMAGE, ExplicitVRLittleEndian)
        assert dcmread(path) == dcmread(original)
    assert incoming(archive_proxy) == []
    assert fastpath_problems(caplog) == []


# --- the relay with fast_path on and off --------------------------------------------------------


@pytest.fixture(scope="module")
def fp_proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def fp_qr(tmp_path_factory: pytest.TempPathFactory, fp_proxy_port: int) -> Iterator[DcmQrSCP]:
    if shutil.which("dcmqrscp") is None:
        pytest.skip("dcmqrscp is not installed (scripts/test.sh installs it)")
    root = tmp_path_factory.mktemp("fastpath-qr")
    server = DcmQrSCP(root / "qr", peers={"proxy": Remote(PROXY_AE, "127.0.0.1", fp_proxy_port)}).start()
    server.load(write_study(MR, root / "mr"))
    yield server
    server.stop()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "pynetdicom-only"])
def test_relay_with_and_without_fast_path(
    fast_path: bool,
    make_config: Callable[..., Config],
    sqlite_url: str,
    fp_proxy_port: int,
    fp_qr: DcmQrSCP,
    storescp: Callable[..., StoreSCP],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """One small C-MOVE (dcmqrscp C-MOVEs to the proxy, the proxy C-STOREs to storescp): it
    relays either way; ``fast_path = false`` leaves both legs to pynetdicom."""
    caplog.set_level(logging.INFO, logger="dicomproxy")
    sent_raw: list[Path] = []
    real_send_file = fastsender.send_file

    def spy(assoc: Any, path: Path, *args: Any, **kwargs: Any) -> Any:
        sent_raw.append(path)
        return real_send_file(assoc, path, *args, **kwargs)

    monkeypatch.setattr(fastsender, "send_file", spy)
    real_store_file = RawAssociation.store_file

    def spy_raw(self: RawAssociation, path: Path, *args: Any, **kwargs: Any) -> Any:
        sent_raw.append(path)
        return real_store_file(self, path, *args, **kwargs)

    monkeypatch.setattr(RawAssociation, "store_file", spy_raw)
    moves: list[str] = []
    real_move = RawAssociation.move

    def spy_move(self: RawAssociation, sop_class: str, destination: str, *args: Any) -> Any:
        status = real_move(self, sop_class, destination, *args)
        moves.append(f"{destination} 0x{int(status.Status):04X}" if status is not None else "lost")
        return status

    monkeypatch.setattr(RawAssociation, "move", spy_move)
    converted: list[str] = []
    real_transcode = forward.transcode_file

    def spy_transcode(src: Path, dst: Path, target: str, *args: Any) -> Any:
        converted.append(target)
        return real_transcode(src, dst, target, *args)

    monkeypatch.setattr(forward, "transcode_file", spy_transcode)
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(MR)])
    engine.dispose()
    dest = storescp("DEST")
    config = make_config(
        proxy={"port": fp_proxy_port, "fast_path": fast_path},
        pacs={"ae_title": fp_qr.remote.ae_title, "host": "127.0.0.1", "port": fp_qr.remote.port},
        peers=[
            {"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port},
        ],
    )
    server = Server(config, build_context(config))
    server.start()
    try:
        assert (server.store_acceptor is not None) is fast_path
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        result = scu.move(
            proxy, "DEST", scu.identifier(study_uids=[MR.study_uid]), calling_ae="CLOUD", timeout=60
        )
        assert (result.status, result.completed, result.failed) == (0x0000, 4, 0), result.line()
        assert len(dest.received()) == 4
        if fast_path:  # again: the raw receiver now overwrites the first move's recycled files
            first = {dcmread(p).SOPInstanceUID: p.read_bytes() for p in dest.received()}
            for p in dest.received():
                p.unlink()
            reused: list[Path] = []
            recycled = server.ctx.relay.recycled  # type: ignore[union-attr]
            real_take = recycled.take

            def spy_take() -> Path | None:
                path = real_take()
                reused.extend([path] if path is not None else [])
                return path

            monkeypatch.setattr(recycled, "take", spy_take)
            again = scu.move(
                proxy, "DEST", scu.identifier(study_uids=[MR.study_uid]), calling_ae="CLOUD", timeout=60
            )
            assert (again.status, again.completed, again.failed) == (0x0000, 4, 0), again.line()
            assert reused  # (the first move's own files may already be overwritten in it)
            assert {dcmread(p).SOPInstanceUID: p.read_bytes() for p in dest.received()} == first
    finally:
        server.stop(drain_timeout=2.0)
    raw_receive = [r for r in caplog.records if r.getMessage().startswith("store association accepted:")]
    assert bool(raw_receive) is fast_path
    assert len(sent_raw) == (8 if fast_path else 0)  # (two moves with the fast path)
    assert moves == ([f"{PROXY_AE} 0x0000"] * 2 if fast_path else [])  # the upstream C-MOVE, raw too
    # dcmqrscp offers Implicit and Explicit VR LE for its C-STOREs; the proxy takes Explicit, which
    # storescp also takes in the onward generic contexts: passed through, nothing re-encoded.
    assert converted == []


def test_storage_contexts_prefer_explicit_vr_little_endian(make_config: Callable[..., Config]) -> None:
    """An archive offering Implicit and Explicit VR LE for a storage class gets Explicit (pynetdicom's
    acceptor takes its own order; its default list starts with Implicit), whichever it lists first."""
    from pynetdicom.presentation import negotiate_as_acceptor

    from dicomproxy.server import build_ae

    supported = build_ae(make_config()).supported_contexts
    for order in (
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    ):
        proposed = presentation_context(CTImageStorage, order)
        proposed.context_id = 1
        results, _ = negotiate_as_acceptor([proposed], supported)
        assert results[0].transfer_syntax == [ExplicitVRLittleEndian]
    only_implicit = presentation_context(CTImageStorage, [ImplicitVRLittleEndian])
    only_implicit.context_id = 3
    results, _ = negotiate_as_acceptor([only_implicit], supported)
    assert results[0].transfer_syntax == [ImplicitVRLittleEndian]


def test_raw_move_to_an_unknown_destination(fp_qr: DcmQrSCP) -> None:
    """RawAssociation.move against dcmqrscp: the archive's own failure status comes back as it is
    (0xA801 Move Destination unknown, PS3.4 C.4.2.1.5) and the association is released cleanly."""
    move_uid = str(StudyRootQueryRetrieveInformationModelMove)
    qr = fp_qr.remote
    assoc = RawAssociation.open(
        "127.0.0.1",
        qr.port,
        calling_ae=PROXY_AE,
        called_ae=qr.ae_title,
        contexts=[presentation_context(move_uid)],
    )
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = MR.study_uid
    syntax = UID(str(assoc.stream.contexts[assoc.context_id(move_uid)].transfer_syntax[0]))
    identifier = encode(query, syntax.is_implicit_VR, syntax.is_little_endian)
    status = assoc.move(move_uid, "NOBODY", bytes(identifier or b""), 7)
    assert status is not None and int(status.Status) == 0xA801
    assoc.release()
    assert not assoc.is_established and not assoc.is_aborted
