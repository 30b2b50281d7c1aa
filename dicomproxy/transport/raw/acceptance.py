"""A-ASSOCIATE negotiation on the raw socket, as acceptor (PS3.8 9.3.2–9.3.4, PS3.7 D.3.3).

Shared by the raw acceptors (:mod:`~dicomproxy.transport.raw.receiver` for archives' C-STOREs,
:mod:`~dicomproxy.transport.raw.queries` for C-FIND/C-ECHO associations). The PDUs are
pynetdicom's own classes and the presentation contexts are negotiated by its
:func:`~pynetdicom.presentation.negotiate_as_acceptor`; what is here is the order of the steps:
read the A-ASSOCIATE-RQ, ask the gate (access rules, association limit), answer with an
A-ASSOCIATE-RJ or -AC.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
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

from dicomproxy.transport.raw.pdu import (
    A_ASSOCIATE_RQ,
    PDU_HEADER,
    PduReader,
    PeerClosed,
    ProtocolError,
    abort,
)

LOG = logging.getLogger("dicomproxy.fastpath")

#: (calling AE, called AE, remote IP) → None to accept, or (reason, (result, source, diagnostic))
#: of the A-ASSOCIATE-RJ (PS3.8 Table 9-21).
Gate = Callable[[str, str, str], "tuple[str, tuple[int, int, int]] | None"]


@dataclass(frozen=True)
class Accepted:
    """An association we accepted: its AE titles (stripped) and accepted contexts by ID."""

    calling: str
    called: str
    contexts: dict[int, PresentationContext]
    #: The requestor's Maximum Length Received (PS3.8 D.1); 0 = unlimited.
    peer_max_pdu: int = 0


@dataclass(frozen=True)
class Refused:
    """An association the gate refused (the A-ASSOCIATE-RJ is sent)."""

    calling: str
    reason: str


def accept(
    sock: socket.socket,
    reader: PduReader,
    address: tuple[str, int],
    *,
    supported: list[PresentationContext],
    max_pdu: int,
    gate: Gate,
) -> Accepted | Refused:
    """Read the A-ASSOCIATE-RQ from ``reader``, answer it on ``sock``."""
    pdu_type, length = reader.header()
    if pdu_type != A_ASSOCIATE_RQ:
        raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
    rq_pdu = RqPdu()
    rq_pdu.decode(PDU_HEADER.pack(pdu_type, length) + reader.body(length))
    rq = rq_pdu.to_primitive()
    calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
    refusal = gate(calling, called, address[0])
    if refusal is not None:
        reason, (result, source, diagnostic) = refusal
        rj = A_ASSOCIATE()
        rj.result, rj.result_source, rj.diagnostic = result, source, diagnostic
        pdu = RjPdu()
        pdu.from_primitive(rj)
        sock.sendall(pdu.encode())
        return Refused(calling, reason)
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
    }
    results, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list, supported, roles or None
    )
    ac = A_ASSOCIATE()
    ac.application_context_name = rq.application_context_name
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result, ac.result_source = 0x00, 0x01
    ac.presentation_context_definition_results_list = results
    ac.user_information = [*user_information(max_pdu), *role_items]
    ac_pdu = AcPdu()
    ac_pdu.from_primitive(ac)
    sock.sendall(ac_pdu.encode())
    peer_max = next(
        (
            int(item.maximum_length_received or 0)
            for item in rq.user_information
            if isinstance(item, MaximumLengthNotification)
        ),
        0,
    )
    contexts = {int(cx.context_id or 0): cx for cx in results if cx.result == 0x00}
    return Accepted(calling, called, contexts, peer_max)


class RawAcceptor:
    """Serves associations handed over by :mod:`dicomproxy.transport.intake`, one per call of
    :meth:`serve` (thread-safe); counts them and aborts them at shutdown. Subclasses run the
    association in :meth:`_run`."""

    #: Names the association in log lines ("store association from ...").
    kind = "raw"

    def __init__(self, supported: list[PresentationContext], max_pdu: int, gate: Gate) -> None:
        self.supported = supported
        self.max_pdu = max_pdu
        self.gate = gate
        self._lock = threading.Lock()
        #: Open associations: socket → (calling AE title once negotiated, remote address).
        self._sockets: dict[socket.socket, tuple[str, tuple[str, int]]] = {}
        #: Called after :meth:`open_associations` changed (the query process reports it to its parent).
        self.changed: Callable[[], object] = lambda: None

    def negotiate(self, sock: socket.socket, reader: PduReader, address: tuple[str, int]) -> Accepted | None:
        """:func:`accept` with this acceptor's contexts, Maximum Length and gate; None if refused."""
        answer = accept(sock, reader, address, supported=self.supported, max_pdu=self.max_pdu, gate=self.gate)
        if isinstance(answer, Refused):
            LOG.debug("%s association refused: %s", self.kind, answer.reason)
            return None
        with self._lock:
            if sock in self._sockets:
                self._sockets[sock] = (answer.calling, address)
        self.changed()
        return answer

    @property
    def active(self) -> int:
        """Associations being served now."""
        with self._lock:
            return len(self._sockets)

    def open_associations(self) -> list[tuple[str, tuple[str, int]]]:
        """(calling AE title, "" before the A-ASSOCIATE-AC; remote address) of each open one."""
        with self._lock:
            return list(self._sockets.values())

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
            self._sockets[sock] = ("", address)
        self.changed()
        where = f"{self.kind} association from {address[0]}:{address[1]}"
        try:
            self._run(sock, address)
        except (PeerClosed, TimeoutError, OSError) as exc:
            LOG.warning("%s ended: %s", where, exc or type(exc).__name__)
        except ProtocolError as exc:
            LOG.warning("%s aborted: %s", where, exc)
            with contextlib.suppress(OSError):
                sock.sendall(abort(0x02, 0x00))
        except Exception:
            LOG.exception("%s: internal error", where)
            with contextlib.suppress(OSError):
                sock.sendall(abort(0x02, 0x00))
        finally:
            with self._lock:
                self._sockets.pop(sock, None)
            self.changed()

    def _run(self, sock: socket.socket, address: tuple[str, int]) -> None:
        raise NotImplementedError


def user_information(max_pdu: int) -> list[Any]:
    """Maximum Length (PS3.8 D.1), Implementation Class UID and Version Name (PS3.7 D.3.3.2)."""
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [length, uid, version]


__all__ = ["Accepted", "Gate", "RawAcceptor", "Refused", "accept", "user_information"]
