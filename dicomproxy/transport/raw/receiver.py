"""Store-only associations from an archive, served on the raw socket (PS3.8 9, PS3.4 B.2).

During our C-MOVE-to-self the archive opens associations to our listening port and sends
C-STOREs. pynetdicom would decode every P-DATA PDU into objects, pass it through its state
machine and two threads and append it to a temporary file — about 1 s of CPU for 300 CT
slices, on the same GIL as the onward C-STOREs. :class:`StoreAcceptor` takes such an
association over right after ``accept()``, when the first PDU (peeked by
:mod:`dicomproxy.transport.intake`, not consumed) is an A-ASSOCIATE-RQ whose calling AE title is a
configured archive: it negotiates with pynetdicom's
own PDU classes and :func:`~pynetdicom.presentation.negotiate_as_acceptor`, applies the same
access rules (:func:`dicomproxy.access.decide`), then streams each data set straight into a file
(file meta + received bytes, never decoded) and answers each C-STORE with the status of the
callback — the same :func:`dicomproxy.pacs.store.deliver` the pynetdicom handler uses.

Anything else on such an association (other than C-ECHO) is answered by an A-ABORT. Every
other association — the cloud's, TLS, an archive that also is a configured peer — stays
pynetdicom's (:class:`dicomproxy.handlers.qrservice` server hook).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom.presentation import PresentationContext

from dicomproxy.status import Status
from dicomproxy.transport.raw.acceptance import Gate, RawAcceptor
from dicomproxy.transport.raw.dimse import (
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    Message,
    MessageStream,
    Released,
)
from dicomproxy.transport.raw.pdu import (
    PduReader,
    ProtocolError,
    kernel_timeout,
    release_rp,
)
from dicomproxy.transport.raw.sender import DEFAULT_MAX_PDV
from dicomproxy.transport.recycle import RecycledFiles

LOG = logging.getLogger("dicomproxy.fastpath")

VERIFICATION = "1.2.840.10008.1.1"
#: PS3.7 C.5.5 Error: Cannot understand (our failure when the callback itself fails).
STATUS_CANNOT_UNDERSTAND = Status.STORE_CANNOT_UNDERSTAND


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE-RQ (PS3.7 Table 9.3-1), as the store callback sees it."""

    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    originator_ae: str | None
    originator_msg_id: int | None


#: Takes a received instance (a complete DICOM file at the path) and returns the C-STORE status.
#: It owns the file: it moves it away or deletes it.
StoreCallback = Callable[[StoreRequest, Path], int]


class StoreAcceptor(RawAcceptor):
    """Serves store-only associations from archives (see the module docstring)."""

    kind = "store"

    def __init__(
        self,
        *,
        ae_title: str,
        supported: list[PresentationContext],
        max_pdu: int,
        claim: Callable[[str], bool],
        gate: Gate,
        on_store: StoreCallback,
        incoming_dir: Path,
        acse_timeout: float,
        dimse_timeout: float,
        recycled: RecycledFiles | None = None,
    ) -> None:
        super().__init__(supported, max_pdu, gate)
        self.ae_title = ae_title
        self.claim = claim
        self.on_store = on_store
        self.incoming_dir = incoming_dir
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        #: Confirmed spool files the received data sets overwrite (:mod:`dicomproxy.transport.recycle`).
        self.recycled = recycled
        self.incoming_dir.mkdir(parents=True, exist_ok=True)

    def _run(self, sock: socket.socket, address: tuple[str, int]) -> None:
        session = _Session(self, sock, address)
        try:
            session.run()
        finally:
            session.discard()


class _Session:
    def __init__(self, owner: StoreAcceptor, sock: socket.socket, address: tuple[str, int]) -> None:
        self.o = owner
        self.sock = sock
        self.address = address
        self.reader = PduReader(sock)
        self.stream: MessageStream | None = None
        self.calling = ""

    def run(self) -> None:
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.o.acse_timeout)
        contexts = self._negotiate()
        if contexts is None:
            return
        kernel_timeout(self.sock, self.o.dimse_timeout)  # no poll() before each recv (issue 29)
        LOG.info("store association accepted: %s from %s:%s", self.calling, *self.address)
        self.stream = stream = MessageStream(
            self.sock,
            contexts,
            self.o.incoming_dir,
            DEFAULT_MAX_PDV,
            reader=self.reader,
            recycled=self.o.recycled,
        )
        while True:
            try:
                msg = stream.read()
            except Released as end:
                if not end.request:
                    raise ProtocolError("A-RELEASE-RP without our A-RELEASE-RQ") from None
                self.sock.sendall(release_rp())
                LOG.debug("store association from %s released", self.calling)
                return
            if msg.field == C_ECHO_RQ and str(contexts[msg.context_id].abstract_syntax) == VERIFICATION:
                stream.respond(msg, C_ECHO_RSP, 0x0000)
            elif msg.field == C_STORE_RQ and msg.path is not None:
                stream.respond(msg, C_STORE_RSP, self._stored(msg, msg.path))
            else:
                raise ProtocolError(f"command 0x{msg.field:04X} on a store association")

    def _negotiate(self) -> dict[int, PresentationContext] | None:
        answer = self.o.negotiate(self.sock, self.reader, self.address)
        if answer is None:
            return None
        self.calling = answer.calling
        return answer.contexts

    def _stored(self, msg: Message, path: Path) -> int:
        cmd = msg.command
        assert self.stream is not None
        request = StoreRequest(
            calling_ae=self.calling,
            sop_class_uid=str(cmd.AffectedSOPClassUID),
            sop_instance_uid=str(cmd.AffectedSOPInstanceUID),
            transfer_syntax=str(self.stream.contexts[msg.context_id].transfer_syntax[0]),
            originator_ae=_text(cmd.get("MoveOriginatorApplicationEntityTitle")),
            originator_msg_id=_int(cmd.get("MoveOriginatorMessageID")),
        )
        try:
            status = self.o.on_store(request, path)
        except Exception:
            LOG.exception("store callback failed")
            status = STATUS_CANNOT_UNDERSTAND
        if status != 0x0000:
            path.unlink(missing_ok=True)
        return status

    def discard(self) -> None:
        """Drop a half-received data set; close the reader."""
        if self.stream is not None:
            self.stream.discard()
        with contextlib.suppress(OSError):
            self.reader.close()


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value).strip()


def _int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


__all__ = ["StoreAcceptor", "StoreCallback", "StoreRequest"]
