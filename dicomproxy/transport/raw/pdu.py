"""Upper-layer framing on a plain blocking socket (PS3.8 9.3): just what the fast path needs.

Association PDUs (A-ASSOCIATE-RQ/AC/RJ) are encoded and decoded by pynetdicom's own
:mod:`pynetdicom.pdu` classes; here is only the byte framing that runs once per PDU on the data
path — P-DATA-TF (9.3.5), A-RELEASE-RQ/RP (9.3.6, 9.3.7) and A-ABORT (9.3.8).
"""

from __future__ import annotations

import io
import select
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import cast

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

#: PS3.8 9.3.1: PDU type (1), reserved (1), PDU length (4, big endian).
PDU_HEADER = struct.Struct(">BxI")
#: PS3.8 9.3.5.1: item length (4), presentation context ID (1), message control header (1).
PDV_HEADER = struct.Struct(">IBB")
#: PDU header + PDV header of a P-DATA-TF with one PDV: PDU length = PDV item length + 4.
PDATA_ONE_PDV = struct.Struct(">BxIIBB")

#: Message control header bits (PS3.8 E.2): bit 0 command/data set, bit 1 last fragment.
CONTROL_COMMAND = 0x01
CONTROL_LAST = 0x02

#: An association PDU (RQ, AC, RJ, release, abort) larger than this is refused as malformed;
#: P-DATA is never read whole, so its size is bounded by what we announced instead.
MAX_CONTROL_PDU = 1024 * 1024

#: Bytes written before a rate cap (``pace``) is told, where a whole batch is written at once.
SEND_BATCH = 1024 * 1024

#: Data set bytes read from a file per step (and so written per ``sendmsg`` and told to ``pace``).
READ_CHUNK = 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol (PS3.8 9.3): the association is aborted."""


class PeerClosed(ConnectionError):
    """The peer closed the connection (or aborted) while we expected more."""


def kernel_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Give ``sock`` its timeout in the kernel (``SO_RCVTIMEO``, ``SO_SNDTIMEO``; None or 0 = none)
    and make it blocking for Python. A Python timeout costs a ``poll`` before every ``recv`` and
    ``send`` — and a second release of the GIL around it: ~7 system calls per relayed instance on
    the data path's three associations (issue 29). A receive that times out returns EAGAIN:
    :class:`PduReader` raises TimeoutError for it, as a Python timeout would; a send raises
    BlockingIOError (an OSError, as Python's TimeoutError is)."""
    sock.settimeout(None)
    left = max(0.0, seconds or 0.0)
    whole, micro = divmod(round(left * 1_000_000), 1_000_000)
    if (whole, micro) == (0, 0) and left > 0:
        micro = 1  # a positive timeout never becomes 0 (= none)
    value = struct.pack("ll", whole, micro)  # struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class PduReader:
    """Reads PDUs from a blocking socket through one buffered file object (a socket with a Python
    timeout, or a kernel one: :func:`kernel_timeout`)."""

    def __init__(self, sock: socket.socket, buffer_size: int = 256 * 1024) -> None:
        self._sock = sock
        self._file = cast(io.BufferedReader, sock.makefile("rb", buffering=buffer_size))

    def waiting(self) -> bool:
        """Whether bytes (or the peer's close) wait to be read: a read would not block.

        Looks at the buffer first (bytes read ahead are invisible to ``select``), then at the
        socket, both without blocking."""
        old = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        try:
            if self._file.peek(1):
                return True
        except BlockingIOError:
            pass
        finally:
            self._sock.settimeout(old)
        return bool(select.select([self._sock], [], [], 0)[0])

    def read_exact(self, n: int) -> bytes:
        data = self._file.read(n)
        if data is None:  # a kernel timeout (EAGAIN) before any byte
            raise TimeoutError("timed out")
        if len(data) != n:  # the end — or a kernel timeout after some bytes: either ends it
            raise PeerClosed("connection closed by the peer")
        return data

    def readinto_exact(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if n is None:  # a kernel timeout (EAGAIN)
                raise TimeoutError("timed out")
            if not n:
                raise PeerClosed("connection closed by the peer")
            got += n

    def header(self) -> tuple[int, int]:
        """(PDU type, PDU length) of the next PDU."""
        pdu_type, length = PDU_HEADER.unpack(self.read_exact(PDU_HEADER.size))
        return pdu_type, length

    def body(self, length: int) -> bytes:
        """A whole control PDU body (never used for P-DATA)."""
        if length > MAX_CONTROL_PDU:
            raise ProtocolError(f"association PDU of {length} bytes")
        return self.read_exact(length)

    def close(self) -> None:
        self._file.close()


def pdata(context_id: int, control: int, payload: bytes | memoryview) -> bytes:
    """One P-DATA-TF PDU carrying one PDV."""
    return PDATA_ONE_PDV.pack(P_DATA_TF, len(payload) + 6, len(payload) + 2, context_id, control) + payload


def release_rq() -> bytes:
    return PDU_HEADER.pack(A_RELEASE_RQ, 4) + b"\x00" * 4


def release_rp() -> bytes:
    return PDU_HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


def abort(source: int = 0x02, reason: int = 0x00) -> bytes:
    """A-ABORT (PS3.8 9.3.8): source 0 = service user, 2 = service provider."""
    return PDU_HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


#: Buffers handed to one ``sendmsg`` call: well under Linux's IOV_MAX (1024).
MAX_IOV = 512


def message_iov(
    context_id: int,
    command: bytes,
    data: io.RawIOBase | io.BufferedIOBase | None,
    length: int,
    max_pdv: int,
    buf: bytearray,
) -> Iterator[list[bytes | memoryview]]:
    """One DIMSE message as P-DATA-TF PDUs of at most ``max_pdv`` value bytes each (PS3.8 9.3.5,
    PS3.7 6.3.1), as lists of buffers for ``socket.sendmsg``: the 12-byte PDU + PDV headers and
    views of ``buf``, into which the data set is read ``len(buf)`` bytes at a time. A list's views
    are valid until the next list is asked for (the next read overwrites ``buf``).

    ``data``: ``length`` bytes of an encoded data set, read from the file's current position and
    never decoded. Command and data set never share a PDU. A PDV's value may span two reads: its
    header states the whole length, the bytes follow from consecutive views. A list holds about
    :data:`MAX_IOV` buffers (:func:`send_iov` cuts it to that per call).
    """
    iov: list[bytes | memoryview] = command_pdus(context_id, command, max_pdv)
    if data is None:
        yield iov
        return
    if length <= 0:
        raise ValueError("empty data set")
    chunk = len(buf) - len(buf) % max_pdv if max_pdv <= len(buf) else len(buf)
    view = memoryview(buf)
    pack = PDATA_ONE_PDV.pack
    offset = pdv_end = 0  # data set bytes read so far; where the current PDV ends
    while offset < length:
        n = min(chunk, length - offset)
        got = 0
        while got < n:
            step = data.readinto(view[got:n])
            if not step:
                raise ValueError(f"data set ended {length - offset - got} bytes early")
            got += step
        pos = 0
        while pos < n:
            if offset + pos == pdv_end:
                size = min(max_pdv, length - pdv_end)
                pdv_end += size
                iov.append(
                    pack(P_DATA_TF, size + 6, size + 2, context_id, CONTROL_LAST if pdv_end == length else 0)
                )
            step = min(n - pos, pdv_end - offset - pos)
            iov.append(view[pos : pos + step])
            pos += step
            if len(iov) >= MAX_IOV:
                yield iov
                iov = []
        offset += n
        if iov:
            yield iov
            iov = []


def command_pdus(context_id: int, command: bytes, max_pdv: int) -> list[bytes | memoryview]:
    """The command set in P-DATA-TF PDUs of one PDV each, none longer than ``max_pdv``, the last
    one flagged (PS3.8 E.2)."""
    return [
        pdata(
            context_id,
            CONTROL_COMMAND | (CONTROL_LAST if start + max_pdv >= len(command) else 0),
            command[start : start + max_pdv],
        )
        for start in range(0, len(command), max_pdv)
    ]


def memory_iov(
    context_id: int, command: bytes, parts: Sequence[bytes | memoryview], max_pdv: int
) -> Iterator[list[bytes | memoryview]]:
    """:func:`message_iov` for a data set already in memory: ``parts``, one after the other (a
    loaded file's data set, or a rewritten header and the loaded file's tail). The PDVs' values are
    views of ``parts`` — nothing is copied in Python; the kernel gathers them. A list carries at
    most about :data:`READ_CHUNK` data set bytes (as a read of :func:`message_iov` does: what a rate
    cap is told per step)."""
    iov: list[bytes | memoryview] = command_pdus(context_id, command, max_pdv)
    views = [memoryview(p) for p in parts if len(p)]
    length = sum(len(v) for v in views)
    if length <= 0:
        raise ValueError("empty data set")
    pack = PDATA_ONE_PDV.pack
    done = batch = 0  # data set bytes framed so far; in the current list
    k = pos = 0  # the part being framed, and where in it
    while done < length:
        size = min(max_pdv, length - done)
        done += size
        iov.append(pack(P_DATA_TF, size + 6, size + 2, context_id, CONTROL_LAST if done == length else 0))
        left = size
        while left:  # a PDV's value may span two parts: its header states the whole length
            view = views[k]
            step = min(left, len(view) - pos)
            iov.append(view[pos : pos + step])
            pos += step
            left -= step
            if pos == len(view):
                k, pos = k + 1, 0
        batch += size
        if batch >= READ_CHUNK or len(iov) >= MAX_IOV:
            yield iov
            iov, batch = [], 0
    if iov:
        yield iov


def message_pdus(
    context_id: int, command: bytes, data: io.RawIOBase | io.BufferedIOBase | None, length: int, max_pdv: int
) -> Iterator[bytes]:
    """:func:`message_iov` joined: batches of whole bytes of at most about :data:`READ_CHUNK`
    data set bytes each, for a socket written with ``sendall`` (pynetdicom's)."""
    buf = bytearray(max(1, min(length, READ_CHUNK)))
    for iov in message_iov(context_id, command, data, length, max_pdv, buf):
        yield b"".join(iov)


def send_message(
    sock: socket.socket,
    context_id: int,
    command: bytes,
    data: io.RawIOBase | io.BufferedIOBase | list[bytes | memoryview] | None,
    length: int,
    max_pdv: int,
    buf: bytearray,
    pace: Callable[[int], object] | None = None,
) -> None:
    """Write one message (:func:`message_iov`, or :func:`memory_iov` for a data set given as a
    list of buffers) to ``sock`` without joining headers and data set bytes: ``sendmsg`` gathers
    them in the kernel. ``buf`` is the caller's reusable read buffer (``len(buf)`` data set bytes
    per list: at most :data:`READ_CHUNK` for a rate cap's steps); ``pace`` is told each list's
    bytes once written (a rate cap waits in it)."""
    if isinstance(data, list):
        iovs = memory_iov(context_id, command, data, max_pdv)
    else:
        iovs = message_iov(context_id, command, data, length, max_pdv, buf)
    for iov in iovs:
        size = sum(len(b) for b in iov) if pace is not None else 0
        send_iov(sock, iov)
        if pace is not None:
            pace(size)


def send_iov(sock: socket.socket, iov: list[bytes | memoryview]) -> None:
    """``sendall`` for a list of buffers (consumed): ``sendmsg`` until every byte is written (a
    socket with a timeout may take only part of them per call)."""
    if not hasattr(sock, "sendmsg"):  # pragma: no cover - not on Linux
        sock.sendall(b"".join(iov))
        return
    while iov:
        sent = sock.sendmsg(iov[:MAX_IOV])
        done = 0
        while done < len(iov) and sent >= len(iov[done]):
            sent -= len(iov[done])
            done += 1
        del iov[:done]
        if sent:
            iov[0] = memoryview(iov[0])[sent:]


def send_paced(sock: socket.socket, batch: bytes | bytearray, pace: Callable[[int], object] | None) -> None:
    """``sock.sendall(batch)``; with ``pace``, in slices of at most :data:`SEND_BATCH` bytes, each
    told to ``pace`` once written (a rate cap waits in it) — also inside one PDU larger than that
    (a peer announcing an unlimited or a large Maximum Length: PDUs of up to 4 MiB)."""
    if pace is None:
        sock.sendall(batch)
        return
    view = memoryview(batch)
    for start in range(0, len(view), SEND_BATCH):
        piece = view[start : start + SEND_BATCH]
        sock.sendall(piece)
        pace(len(piece))


__all__ = [
    "PduReader",
    "PeerClosed",
    "ProtocolError",
    "kernel_timeout",
    "memory_iov",
    "message_iov",
    "message_pdus",
    "send_iov",
    "send_message",
    "send_paced",
]
