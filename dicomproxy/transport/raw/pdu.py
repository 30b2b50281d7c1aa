"""Upper-layer framing on a plain blocking socket (PS3.8 9.3): just what the fast path needs.

Association PDUs (A-ASSOCIATE-RQ/AC/RJ) are encoded and decoded by pynetdicom's own
:mod:`pynetdicom.pdu` classes; here is only the byte framing that runs once per PDU on the data
path — P-DATA-TF (9.3.5), A-RELEASE-RQ/RP (9.3.6, 9.3.7) and A-ABORT (9.3.8).
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Callable, Iterator
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

#: Bytes gathered before one ``sendall`` (several PDUs per system call).
SEND_BATCH = 1024 * 1024

#: Data set bytes read from a file per step.
READ_CHUNK = 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol (PS3.8 9.3): the association is aborted."""


class PeerClosed(ConnectionError):
    """The peer closed the connection (or aborted) while we expected more."""


class PduReader:
    """Reads PDUs from a blocking socket through one buffered file object."""

    def __init__(self, sock: socket.socket, buffer_size: int = 256 * 1024) -> None:
        self._file = cast(io.BufferedReader, sock.makefile("rb", buffering=buffer_size))

    def read_exact(self, n: int) -> bytes:
        data = self._file.read(n)
        if data is None or len(data) != n:
            raise PeerClosed("connection closed by the peer")
        return data

    def readinto_exact(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
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


def message_pdus(
    context_id: int, command: bytes, data: io.RawIOBase | io.BufferedIOBase | None, length: int, max_pdv: int
) -> Iterator[bytearray]:
    """One DIMSE message as P-DATA-TF PDUs of at most ``max_pdv`` value bytes each, gathered
    into batches of about :data:`SEND_BATCH` bytes (PS3.8 9.3.5, PS3.7 6.3.1).

    ``data``: ``length`` bytes of an encoded data set, read from the file's current position
    and never decoded. Command and data set never share a PDU.
    """
    batch = bytearray()
    for start in range(0, len(command), max_pdv):
        last = start + max_pdv >= len(command)
        batch += pdata(
            context_id, CONTROL_COMMAND | (CONTROL_LAST if last else 0), command[start : start + max_pdv]
        )
    if data is None:
        yield batch
        return
    if length <= 0:
        raise ValueError("empty data set")
    buf = bytearray(min(length, max(max_pdv, READ_CHUNK - READ_CHUNK % max_pdv)))
    left = length
    while left:
        n = min(len(buf), left)
        view = memoryview(buf)[:n]
        got = 0
        while got < n:
            step = data.readinto(view[got:])
            if not step:
                raise ValueError(f"data set ended {left - got} bytes early")
            got += step
        for start in range(0, n, max_pdv):
            end = min(start + max_pdv, n)
            control = CONTROL_LAST if left == end else 0
            batch += PDATA_ONE_PDV.pack(P_DATA_TF, end - start + 6, end - start + 2, context_id, control)
            batch += view[start:end]
            if len(batch) >= SEND_BATCH:
                yield batch
                batch = bytearray()
        left -= n
    if batch:
        yield batch


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
    "message_pdus",
    "send_paced",
]
