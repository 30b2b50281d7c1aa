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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC as AcPdu
from pynetdicom.pdu import A_ASSOCIATE_RJ as RjPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as RqPdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomproxy.status import Status
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
    A_ASSOCIATE_RQ,
    PDU_HEADER,
    PduReader,
    PeerClosed,
    ProtocolError,
    abort,
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
#: (calling AE, called AE, remote IP) → None to accept, or (reason, (result, source, diagnostic)).
Gate = Callable[[str, str, str], "tuple[str, tuple[int, int, int]] | None"]


class StoreAcceptor:
    """Serves one store-only association at a time per call of :meth:`serve` (thread-safe)."""

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
        self.ae_title = ae_title
        self.supported = supported
        self.max_pdu = max_pdu
        self.claim = claim
        self.gate = gate
        self.on_store = on_store
        self.incoming_dir = incoming_dir
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        #: Confirmed spool files the received data sets overwrite (:mod:`dicomproxy.transport.recycle`).
        self.recycled = recycled
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    @property
    def active(self) -> int:
        """Store associations being served now."""
        with self._lock:
            return len(self._sockets)

    def abort_all(self) -> int:
        """A-ABORT every association being served (shutdown drain); how many there were."""
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(abort(0x02, 0x00))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(socks)

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Run the association on ``sock`` to its end; never raises (logs one line)."""
        with self._lock:
            self._sockets.add(sock)
        session = _Session(self, sock, address)
        try:
            session.run()
        except (PeerClosed, TimeoutError, OSError) as exc:
            LOG.warning(
                "store association from %s:%s ended: %s", address[0], address[1], exc or type(exc).__name__
            )
        except ProtocolError as exc:
            LOG.warning("store association from %s:%s aborted: %s", address[0], address[1], exc)
            with contextlib.suppress(OSError):
                sock.sendall(abort(0x02, 0x00))
        except Exception:
            LOG.exception("store association from %s:%s: internal error", address[0], address[1])
            with contextlib.suppress(OSError):
                sock.sendall(abort(0x02, 0x00))
        finally:
            session.discard()
            with self._lock:
                self._sockets.discard(sock)


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
        self.sock.settimeout(self.o.dimse_timeout or None)
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
        pdu_type, length = self.reader.header()
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        rq_pdu = RqPdu()
        rq_pdu.decode(PDU_HEADER.pack(pdu_type, length) + self.reader.body(length))
        rq = rq_pdu.to_primitive()
        self.calling = str(rq.calling_ae_title).strip()
        refusal = self.o.gate(self.calling, str(rq.called_ae_title).strip(), self.address[0])
        if refusal is not None:
            reason, (result, source, diagnostic) = refusal
            rj = A_ASSOCIATE()
            rj.result, rj.result_source, rj.diagnostic = result, source, diagnostic
            pdu = RjPdu()
            pdu.from_primitive(rj)
            self.sock.sendall(pdu.encode())
            LOG.debug("store association refused: %s", reason)
            return None
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
        }
        results, role_items = negotiate_as_acceptor(
            rq.presentation_context_definition_list, self.o.supported, roles or None
        )
        ac = A_ASSOCIATE()
        ac.application_context_name = rq.application_context_name
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result, ac.result_source = 0x00, 0x01
        ac.presentation_context_definition_results_list = results
        ac.user_information = [*user_information(self.o.max_pdu), *role_items]
        ac_pdu = AcPdu()
        ac_pdu.from_primitive(ac)
        self.sock.sendall(ac_pdu.encode())
        return {int(cx.context_id or 0): cx for cx in results if cx.result == 0x00}

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


def user_information(max_pdu: int) -> list[Any]:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [length, uid, version]


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value).strip()


def _int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


__all__ = ["StoreAcceptor", "StoreCallback", "StoreRequest"]
