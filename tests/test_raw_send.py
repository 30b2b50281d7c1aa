"""The raw data path's gathered writes (issue 29): :func:`pdu.send_message` puts on the wire exactly
the bytes :func:`pdu.message_pdus` frames, through ``sendmsg`` and a reused read buffer, also when
the socket takes only part of a write."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest
from pynetdicom.presentation import build_context as presentation_context

from dicomproxy.transport import rewritten
from dicomproxy.transport.raw import dimse, pdu, wire
from dicomproxy.transport.raw import sender as fastsender

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def a_command() -> bytes:
    return wire.encode_command(fastsender.store_command(7, CT_IMAGE, "1.2.3.4.5.6.7.8.9", ("CLOUD", 42)))


def payload(length: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(length))


def framed(command: bytes, data: bytes | None, max_pdv: int) -> bytes:
    source = io.BytesIO(data) if data is not None else None
    return b"".join(pdu.message_pdus(5, command, source, len(data or b""), max_pdv))


class Trickle:
    """A socket stand-in whose ``sendmsg`` takes at most ``step`` bytes per call (as a socket with a
    timeout and a full send buffer does), recording what it took."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.out = bytearray()
        self.widest = 0

    def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
        self.widest = max(self.widest, len(buffers))
        taken = 0
        for b in buffers:
            part = bytes(b)[: self.step - taken]
            self.out += part
            taken += len(part)
            if taken == self.step:
                break
        return taken


@pytest.mark.parametrize("step", [1, 5, 6, 7, 1000, 1 << 30])
@pytest.mark.parametrize(("max_pdv", "length", "buf"), [(16, 100, 64), (1000, 2500, 999), (1000, 2500, 4096)])
def test_send_message_survives_partial_writes(step: int, max_pdv: int, length: int, buf: int) -> None:
    command, data = a_command(), payload(length)
    sock = Trickle(step)
    pdu.send_message(sock, 5, command, io.BytesIO(data), length, max_pdv, bytearray(buf))  # type: ignore[arg-type]
    assert bytes(sock.out) == framed(command, data, max_pdv)


@pytest.mark.parametrize("max_pdv", [16, 1000, 16378, fastsender.DEFAULT_MAX_PDV])
@pytest.mark.parametrize("length", [None, 1, 16377, 16378, 16379, 3 * 1024 * 1024 + 7])
def test_send_message_over_a_socket(max_pdv: int, length: int | None) -> None:
    """Through a real socket with a small send buffer (so ``sendmsg`` returns short), a reused buffer
    smaller than a PDV (a PDV's value then spans reads): the same bytes as the joined framing."""
    if max_pdv == 16 and length is not None and length > 20000:
        pytest.skip("200,000 PDVs: covered by the smaller lengths")
    command = a_command()
    data = payload(length) if length is not None else None
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10)
    got = bytearray()

    def drain() -> None:
        while chunk := b.recv(1500):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        source = io.BytesIO(data) if data is not None else None
        for _ in range(2):  # the buffer is reused by the second message
            pdu.send_message(a, 5, command, source, len(data or b""), max_pdv, bytearray(100_000))
            source = io.BytesIO(data) if data is not None else None
    finally:
        a.close()
        reader.join(10)
        b.close()
    assert bytes(got) == framed(command, data, max_pdv) * 2


def test_send_message_refuses_empty_or_short_data() -> None:
    sock = Trickle(1 << 30)
    with pytest.raises(ValueError, match="empty data set"):
        pdu.send_message(sock, 1, a_command(), io.BytesIO(b""), 0, 1000, bytearray(10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ended 5 bytes early"):
        pdu.send_message(sock, 1, a_command(), io.BytesIO(b"x" * 10), 15, 1000, bytearray(64))  # type: ignore[arg-type]


def test_send_message_stays_under_iov_max() -> None:
    """Tiny PDVs: each ``sendmsg`` gets at most :data:`pdu.MAX_IOV` buffers (Linux's IOV_MAX is 1024)."""
    sock = Trickle(1 << 30)
    data = payload(50_000)
    pdu.send_message(sock, 1, a_command(), io.BytesIO(data), len(data), 16, bytearray(1 << 20))  # type: ignore[arg-type]
    assert sock.widest == pdu.MAX_IOV
    assert bytes(sock.out) == b"".join(pdu.message_pdus(1, a_command(), io.BytesIO(data), len(data), 16))


def test_send_message_tells_pace_each_step() -> None:
    """A rate cap (``pace``) hears of every byte written, about :data:`pdu.READ_CHUNK` at a time."""
    sock = Trickle(1000)
    told: list[int] = []
    data = payload(3 * pdu.READ_CHUNK + 5)
    buf = bytearray(pdu.READ_CHUNK)
    pdu.send_message(sock, 1, a_command(), io.BytesIO(data), len(data), 16378, buf, told.append)  # type: ignore[arg-type]
    assert sum(told) == len(sock.out) == len(framed(a_command(), data, 16378))
    assert len(told) == 4
    assert max(told) < pdu.READ_CHUNK + 1024


@pytest.mark.parametrize("max_pdv", [1000, 16378, fastsender.DEFAULT_MAX_PDV])
@pytest.mark.parametrize(
    "length", [1, dimse.WRITE_CHUNK - 200, dimse.WRITE_CHUNK, dimse.WRITE_CHUNK + 1, 3 * 1024 * 1024 + 7]
)
def test_received_data_set_is_the_file(tmp_path: Path, max_pdv: int, length: int) -> None:
    """The receiving side (``MessageStream.read``) gathers PDVs in its buffer and writes them
    unbuffered: the file is our meta group and then exactly the bytes sent, for data sets ending
    before, on and after a buffer boundary; two messages in a row on one stream."""
    context = presentation_context(CT_IMAGE, ["1.2.840.10008.1.2.1"])
    context.context_id = 5
    a, b = socket.socketpair()
    data = payload(length)
    command = wire.encode_command(fastsender.store_command(7, CT_IMAGE, "1.2.3.4", None))

    def write() -> None:
        for _ in range(2):
            pdu.send_message(a, 5, command, io.BytesIO(data), length, max_pdv, bytearray(pdu.READ_CHUNK))

    writer = threading.Thread(target=write)
    writer.start()
    stream = dimse.MessageStream(b, {5: context}, tmp_path, max_pdv)
    try:
        for _ in range(2):
            msg = stream.read()
            assert msg.path is not None
            expected = wire.file_preamble_and_meta(CT_IMAGE, "1.2.3.4", "1.2.840.10008.1.2.1") + data
            assert msg.path.read_bytes() == expected
            msg.path.unlink()
    finally:
        writer.join(30)
        stream.close()
        a.close()
        b.close()


@pytest.mark.parametrize("max_pdv", [16, 1000, 16378])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 2500, 16378, 16379, 2 * 1024 * 1024 + 5])
@pytest.mark.parametrize("cut", [None, 0, 1, 7, 1000, 16380])
def test_a_data_set_in_memory_is_framed_as_one_read_from_a_file(
    max_pdv: int, length: int, cut: int | None
) -> None:
    """:func:`pdu.memory_iov` (a loaded file, issue 29): the bytes of the file reader's framing, also
    with the data set in two parts (a rewritten header and the file's tail) and a PDV spanning them;
    a rate cap told every byte, at most about a read's worth (:data:`pdu.READ_CHUNK`) per step."""
    if max_pdv == 16 and length > 20000:
        pytest.skip("131,000 PDVs: covered by the larger PDVs")
    command, data = a_command(), payload(length)
    cut = None if cut is None else min(cut, length)
    parts: list[bytes | memoryview] = [data] if cut is None else [data[:cut], memoryview(data)[cut:]]
    sock, told = Trickle(1 << 30), []
    pdu.send_message(sock, 5, command, parts, 0, max_pdv, bytearray(0), told.append)  # type: ignore[arg-type]
    assert bytes(sock.out) == framed(command, data, max_pdv)
    assert sum(told) == len(sock.out)
    headers = 12 * (pdu.READ_CHUNK // max_pdv + 2)
    assert max(told) <= len(command) + 12 + pdu.READ_CHUNK + max_pdv + headers


def test_load_reads_a_file_that_fits_and_declines_the_rest(tmp_path: Path) -> None:
    """:func:`rewritten.load`: the whole file in the buffer, or None (larger, empty, missing: the
    sender then streams it, and reports what cannot be read)."""
    buf = bytearray(1000)
    for name, size in (("fits", 1000), ("small", 3)):
        (tmp_path / name).write_bytes(payload(size))
        loaded = rewritten.load(tmp_path / name, buf)
        assert loaded is not None and bytes(loaded.data) == payload(size) and loaded.path == tmp_path / name
    (tmp_path / "larger").write_bytes(payload(1001))
    (tmp_path / "empty").write_bytes(b"")
    for name in ("larger", "empty", "missing"):
        assert rewritten.load(tmp_path / name, buf) is None


def test_a_kernel_timeout_reads_and_times_out_as_a_python_one() -> None:
    """:func:`pdu.kernel_timeout` (issue 29: no ``poll`` before each ``recv``): the socket is
    blocking for Python, the kernel holds the timeout; a read that times out raises TimeoutError
    (before any byte, and inside a message), the peer's close PeerClosed, as with Python's."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        pdu.kernel_timeout(ours, 0.05)
        assert ours.gettimeout() is None
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != bytes(16)
        reader = pdu.PduReader(ours)
        with pytest.raises(TimeoutError):
            reader.read_exact(6)
        theirs.sendall(pdu.pdata(1, pdu.CONTROL_LAST, b"abcd"))
        assert reader.header() == (pdu.P_DATA_TF, 10)
        view = memoryview(bytearray(20))
        with pytest.raises(TimeoutError):  # 10 bytes there, 20 wanted
            reader.readinto_exact(view)
        theirs.sendall(b"x" * 30)
        theirs.shutdown(socket.SHUT_WR)
        reader.readinto_exact(memoryview(bytearray(20)))
        with pytest.raises(pdu.PeerClosed):
            reader.read_exact(20)  # 10 left, then the end
        pdu.kernel_timeout(ours, 0)  # none
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)
