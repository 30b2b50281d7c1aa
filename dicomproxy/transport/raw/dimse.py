"""DIMSE messages read from and written to a raw association (PS3.7 6.3, PS3.8 9.3.5, E.2).

:class:`MessageStream` is shared by the store acceptor and the raw requestor. A C-STORE-RQ's
data set is streamed into a file (file meta from the command and the context's transfer
syntax, then the received bytes, never decoded); any other data set (a C-GET/C-MOVE response
identifier) is small and kept in memory.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom.presentation import PresentationContext

from dicomproxy.transport.raw.pdu import (
    A_ABORT,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    CONTROL_COMMAND,
    CONTROL_LAST,
    P_DATA_TF,
    PDV_HEADER,
    READ_CHUNK,
    PduReader,
    PeerClosed,
    ProtocolError,
    message_pdus,
    pdata,
    send_message,
)
from dicomproxy.transport.raw.wire import Command, decode_command, encode_command, file_preamble_and_meta
from dicomproxy.transport.recycle import RecycledFiles

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
#: (0000,0800) Command Data Set Type: 0x0101 = no data set (PS3.7 E.1); anything else = one follows.
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0000
#: (0000,0700) Priority MEDIUM (PS3.7 9.1.1.1.1)
PRIORITY_MEDIUM = 0x0000


#: Names of the files data sets are received into (``tempfile.mkstemp`` in the store folder).
PARTIAL_PREFIX, PARTIAL_SUFFIX = "tmp", ".dcm"


def clear_partial(store_dir: Path) -> int:
    """Delete the files a killed process was receiving data sets into (at ``serve``'s start,
    before it listens): never answered to the archive, so never the journal's (PS3.7 9.1.1 — the
    archive counts a C-STORE without a response as failed, and the job's resume fetches it again);
    how many there were. Renamed files (spool, recycled) are not here."""
    removed = 0
    if store_dir.is_dir():
        for stale in store_dir.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed += 1
    return removed


def message_ids() -> Iterator[int]:
    """Message IDs (0000,0110), US: 1–65535, then round again (PS3.7 E.1). Not ``itertools.cycle``,
    which keeps a copy of every value it has yielded."""
    return (n % 65535 + 1 for n in itertools.count())


#: Largest command set, and largest data set kept in memory (identifiers), we accept.
MAX_COMMAND = 64 * 1024
MAX_IDENTIFIER = 16 * 1024 * 1024
#: Bytes of data set moved per step into the open file.
WRITE_CHUNK = 256 * 1024


@dataclass
class Message:
    """One received DIMSE message."""

    context_id: int
    command: Command
    #: The data set of a C-STORE-RQ, as a complete DICOM file (the receiver owns it).
    path: Path | None = None
    #: Any other data set, encoded as sent.
    data: bytes | None = None

    @property
    def field(self) -> int:
        return int(self.command.CommandField)


class Released(Exception):
    """A-RELEASE-RQ (``request`` True) or A-RELEASE-RP arrived instead of a message."""

    def __init__(self, request: bool) -> None:
        super().__init__("release requested" if request else "release confirmed")
        self.request = request


class MessageStream:
    """Reads whole DIMSE messages from ``sock`` (one thread); writes whole messages to it (any thread)."""

    def __init__(
        self,
        sock: socket.socket,
        contexts: dict[int, PresentationContext],
        store_dir: Path | None,
        max_pdv: int,
        reader: PduReader | None = None,
        recycled: RecycledFiles | None = None,
    ) -> None:
        self.sock = sock
        self.reader = reader or PduReader(sock)
        self.contexts = contexts
        self.store_dir = store_dir
        self.max_pdv = max_pdv
        self._buf = bytearray(WRITE_CHUNK)
        self._fill = 0  # bytes of the data set being received that wait in _buf for the file
        self._file: Any = None
        self._path: Path | None = None
        #: Confirmed files to overwrite instead of creating one per instance (issue 29).
        self.recycled = recycled
        #: Size of the recycled file being overwritten (0 for a new one): cut to what was written.
        self._old_size = 0
        self._written = 0
        self._left = 0  # bytes of the current P-DATA-TF not read yet
        self._send_lock = threading.Lock()
        #: Read buffer of the data sets this stream sends (allocated on the first one, reused).
        self._out = bytearray()

    # -- reading -------------------------------------------------------------------------
    def read(self) -> Message:
        """The next message; raises Released, PeerClosed (also on A-ABORT) or ProtocolError.

        A P-DATA-TF may carry the end of one message and the start of the next (PS3.8 9.3.5):
        what is left of the current PDU is kept for the next call.
        """
        command = bytearray()
        cmd: Command | None = None
        cmd_context = 0
        data = bytearray()
        view = memoryview(self._buf)
        try:
            while True:
                if not self._left:
                    self._left = self._next_pdata(pending=cmd is not None or bool(command))
                if self._left < PDV_HEADER.size:
                    raise ProtocolError("P-DATA-TF shorter than its PDV header")
                item, context_id, control = PDV_HEADER.unpack(self.reader.read_exact(PDV_HEADER.size))
                if item < 2 or item + 4 > self._left:
                    raise ProtocolError(f"PDV item length {item} does not fit its PDU")
                self._left -= item + 4
                size = item - 2
                if context_id not in self.contexts:
                    raise ProtocolError(f"presentation context {context_id} was not accepted")
                if control & CONTROL_COMMAND:
                    if cmd is not None:
                        raise ProtocolError("a command fragment arrived inside a data set")
                    command += self.reader.read_exact(size)
                    if len(command) > MAX_COMMAND:
                        raise ProtocolError("command set larger than 64 kB")
                    if not control & CONTROL_LAST:
                        continue
                    try:
                        cmd, cmd_context = decode_command(command), context_id
                    except ValueError as exc:
                        raise ProtocolError(f"undecodable command set: {exc}") from None
                    if "CommandField" not in cmd:
                        raise ProtocolError("command set without (0000,0100) Command Field")
                    if int(cmd.get("CommandDataSetType", NO_DATA_SET)) == NO_DATA_SET:
                        return Message(context_id, cmd)
                    if int(cmd.CommandField) == C_STORE_RQ:
                        if self.store_dir is None:
                            raise ProtocolError("C-STORE-RQ on an association without storage")
                        self._open(cmd, context_id)
                    continue
                if cmd is None:
                    raise ProtocolError("data set fragment without a command")
                if context_id != cmd_context:
                    raise ProtocolError("data set on another presentation context than its command")
                if self._file is not None:
                    while size:  # PDVs gathered in _buf, written WRITE_CHUNK at a time, unbuffered
                        if self._fill == len(self._buf):
                            self._flush(view)
                        n = min(size, len(self._buf) - self._fill)
                        self.reader.readinto_exact(view[self._fill : self._fill + n])
                        self._fill += n
                        size -= n
                else:
                    data += self.reader.read_exact(size)
                    if len(data) > MAX_IDENTIFIER:
                        raise ProtocolError("identifier larger than 16 MB")
                if control & CONTROL_LAST:
                    if self._file is not None:
                        self._flush(view)
                        if self._old_size > self._written:  # a longer earlier instance's end
                            self._file.truncate(self._written)
                        self._file.close()
                        path, self._file, self._path = self._path, None, None
                        return Message(context_id, cmd, path=path)
                    return Message(context_id, cmd, data=bytes(data))
        except BaseException:
            self.discard()
            raise

    def _next_pdata(self, pending: bool) -> int:
        """Read PDU headers up to the next P-DATA-TF; its length."""
        pdu_type, length = self.reader.header()
        if pdu_type == P_DATA_TF:
            return length
        if pdu_type in (A_RELEASE_RQ, A_RELEASE_RP):
            self.reader.body(length)
            if pending:
                raise ProtocolError("release in the middle of a message")
            raise Released(pdu_type == A_RELEASE_RQ)
        if pdu_type == A_ABORT:
            self.reader.body(length)
            raise PeerClosed("aborted by the peer")
        raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}")

    def _open(self, cmd: Command, context_id: int) -> None:
        head = file_preamble_and_meta(
            str(cmd.get("AffectedSOPClassUID", "")),
            str(cmd.get("AffectedSOPInstanceUID", "")),
            str(self.contexts[context_id].transfer_syntax[0]),
        )
        self._old_size, self._written = 0, 0
        reuse = self.recycled.take() if self.recycled is not None else None
        if reuse is not None:
            try:
                fh = open(reuse, "r+b", buffering=0)  # noqa: SIM115 - closed in read()/discard()
            except OSError:
                reuse.unlink(missing_ok=True)
            else:
                self._file, self._path = fh, reuse
                self._old_size = os.fstat(fh.fileno()).st_size
        if self._file is None:
            fd, name = tempfile.mkstemp(  # not None: read() checked
                suffix=PARTIAL_SUFFIX, prefix=PARTIAL_PREFIX, dir=self.store_dir
            )
            self._path = Path(name)
            self._file = os.fdopen(fd, "wb", buffering=0)
        self._buf[: len(head)] = head
        self._fill = len(head)

    def _flush(self, view: memoryview) -> None:
        """Write what waits in the buffer (a raw file may take part of it per call)."""
        done = 0
        while done < self._fill:
            done += self._file.write(view[done : self._fill])
        self._written += done
        self._fill = 0

    def discard(self) -> None:
        """Drop a half-received data set file."""
        fh, self._file = self._file, None
        path, self._path = self._path, None
        self._fill = 0
        if fh is not None:
            with contextlib.suppress(OSError, ValueError):
                fh.close()
        if path is not None:
            path.unlink(missing_ok=True)

    # -- writing -------------------------------------------------------------------------
    def send(
        self,
        context_id: int,
        command: dict[str, Any],
        data: io.RawIOBase | io.BufferedIOBase | bytes | list[bytes | memoryview] | None = None,
        length: int = 0,
        pace: Callable[[int], object] | None = None,
    ) -> None:
        """One message: ``data`` is encoded data set bytes (or a list of buffers, one after the
        other: a loaded file's), or a file positioned at them (``length``);
        ``pace`` is told each batch's bytes once written (a rate cap waits in it).

        Whole messages only, also when two threads write (a C-CANCEL while the reading thread answers
        a C-STORE on a C-GET association): PS3.8 9.3.5, one message's PDVs are not interleaved."""
        raw = encode_command(command)
        with self._send_lock:
            if data is None:
                if len(raw) <= self.max_pdv:
                    self.sock.sendall(pdata(context_id, CONTROL_COMMAND | CONTROL_LAST, raw))
                else:  # a command longer than the peer takes in one PDV (PS3.8 9.3.5)
                    for pdus in message_pdus(context_id, raw, None, 0, self.max_pdv):
                        self.sock.sendall(pdus)
                return
            if isinstance(data, (bytes, bytearray, memoryview)):
                data = [data]  # framed from memory (memory_iov), no copy into the read buffer
            if isinstance(data, list):
                send_message(self.sock, context_id, raw, data, 0, self.max_pdv, self._out, pace)
                return
            if not self._out:
                self._out = bytearray(READ_CHUNK)
            send_message(self.sock, context_id, raw, data, length, self.max_pdv, self._out, pace)

    def respond(self, rq: Message, field: int, status: int, **extra: Any) -> None:
        """A response without data set to ``rq`` (PS3.7 9.3, C.4)."""
        rsp: dict[str, Any] = {
            "AffectedSOPClassUID": rq.command.get("AffectedSOPClassUID", ""),
            "CommandField": field,
            "MessageIDBeingRespondedTo": rq.command.get("MessageID", 0),
            "CommandDataSetType": NO_DATA_SET,
            "Status": status,
            **extra,
        }
        if "AffectedSOPInstanceUID" in rq.command:
            rsp["AffectedSOPInstanceUID"] = rq.command["AffectedSOPInstanceUID"]
        self.send(rq.context_id, rsp)

    def close(self) -> None:
        self.discard()
        with contextlib.suppress(OSError):
            self.reader.close()
