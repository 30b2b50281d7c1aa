"""A requestor association on a plain socket: onward C-STOREs; C-FIND, C-GET and C-MOVE to an archive.

Negotiation (PS3.8 9.3.2/9.3.3, PS3.7 D.3.3.4 role selection) uses pynetdicom's PDU classes
and :func:`~pynetdicom.presentation.negotiate_as_requestor`; messages go through
:class:`~dicomproxy.transport.raw.dimse.MessageStream`. There is no reactor thread: the caller's
thread writes a request and then blocks on the socket for the answer, so a C-STORE-RSP is
seen the moment it arrives instead of at the next 1 ms poll of two pynetdicom threads.

Duck-types the parts of :class:`pynetdicom.association.Association` the forwarder and the
PACS client use (``accepted_contexts``, ``is_established``, ``release``, ``abort``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC as AcPdu
from pynetdicom.pdu import A_ASSOCIATE_RJ as RjPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as RqPdu
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, negotiate_as_requestor

from dicomproxy.status import Status
from dicomproxy.transport.raw.acceptance import user_information
from dicomproxy.transport.raw.dimse import (
    C_CANCEL_RQ,
    C_FIND_RQ,
    C_FIND_RSP,
    C_GET_RQ,
    C_GET_RSP,
    C_MOVE_RQ,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DATA_SET_PRESENT,
    NO_DATA_SET,
    PRIORITY_MEDIUM,
    Message,
    MessageStream,
    Released,
)
from dicomproxy.transport.raw.pdu import (
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    PDU_HEADER,
    PduReader,
    PeerClosed,
    ProtocolError,
    abort,
    kernel_timeout,
    release_rq,
)
from dicomproxy.transport.raw.sender import max_pdv, store_command
from dicomproxy.transport.raw.wire import Command, FileMeta, parse_file_meta, read_file_meta
from dicomproxy.transport.recycle import RecycledFiles
from dicomproxy.transport.rewritten import Loaded, Rewritten, open_data

LOG = logging.getLogger("dicomproxy.fastpath")

APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")  # PS3.7 A.2.1 DICOM Application Context Name


class AssociationFailed(ConnectionError):
    """The peer could not be reached, rejected us, or accepted no presentation context."""

    def __init__(self, detail: str, *, rejected: bool = False) -> None:
        super().__init__(detail)
        #: The peer answered A-ASSOCIATE-RJ (PS3.8 9.3.4).
        self.rejected = rejected


class RawAssociation:
    """One established requestor association (see module docstring). Not thread-safe, except
    :meth:`abort`, which any thread may call to end a blocked call."""

    def __init__(
        self,
        sock: socket.socket,
        reader: PduReader,
        accepted: list[PresentationContext],
        store_dir: Path | None,
        max_pdv: int,
        dimse_timeout: float,
        recycled: RecycledFiles | None = None,
    ) -> None:
        self.sock = sock
        self.accepted_contexts = accepted
        self.stream = MessageStream(
            sock,
            {int(cx.context_id or 0): cx for cx in accepted},
            store_dir or Path(tempfile.gettempdir()),
            max_pdv,
            reader=reader,
            recycled=recycled,
        )
        self.is_established = True
        self.is_aborted = False
        self._closed = threading.Lock()
        #: (context ID, Message ID) of the C-GET/C-MOVE awaiting its final response (for cancel()).
        self._outstanding: tuple[int, int] | None = None
        kernel_timeout(sock, dimse_timeout)  # no poll() before each recv and send (issue 29)

    # -- establishment ---------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        calling_ae: str,
        called_ae: str,
        contexts: list[PresentationContext],
        store_dir: Path | None = None,
        recycled: RecycledFiles | None = None,
        roles: list[SCP_SCU_RoleSelectionNegotiation] | None = None,
        max_pdu: int = 0,
        connect_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
    ) -> RawAssociation:
        """Connect and negotiate; raises AssociationFailed."""
        rq, requested = _association_rq(calling_ae, called_ae, contexts, roles or [], max_pdu)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise AssociationFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        reader = PduReader(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(acse_timeout)
            accepted, peer_max = _negotiate(sock, reader, rq, requested, roles or [], called_ae)
        except AssociationFailed:
            reader.close()
            sock.close()
            raise
        except (OSError, PeerClosed, ProtocolError, ValueError) as exc:
            reader.close()
            sock.close()
            raise AssociationFailed(
                f"association with {called_ae} failed: {exc or type(exc).__name__}"
            ) from exc
        return cls(sock, reader, accepted, store_dir, max_pdv(peer_max), dimse_timeout, recycled)

    # -- services --------------------------------------------------------------------------
    def syntax(self, sop_class: str) -> UID:
        """The transfer syntax accepted for ``sop_class`` (its first accepted context)."""
        return UID(str(self.stream.contexts[self.context_id(sop_class)].transfer_syntax[0]))

    def encode(self, sop_class: str, identifier: Dataset) -> bytes:
        """``identifier`` encoded in the syntax accepted for ``sop_class``."""
        syntax = self.syntax(sop_class)
        return bytes(encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian) or b"")

    def context_id(self, sop_class: str, syntax: str | None = None) -> int:
        for cx in self.accepted_contexts:
            if str(cx.abstract_syntax) == sop_class and (
                syntax is None or str(cx.transfer_syntax[0]) == syntax
            ):
                return int(cx.context_id or 0)
        raise ValueError(f"no accepted presentation context for {sop_class} in {syntax}")

    def store_file(
        self,
        path: Path | Rewritten | Loaded,
        msg_id: int,
        originator: tuple[str, int] | None = None,
        pace: Callable[[int], object] | None = None,
    ) -> int | None:
        """C-STORE the DICOM file at ``path`` as it is encoded (or as rewritten: its new head, then
        its tail from disk — or from memory, as a :class:`Loaded` file is sent); the response's
        (0000,0900) Status, or None if the association failed (it is aborted then). ValueError: no
        matching context. ``pace``: told each batch's bytes as written (a rate cap waits in it)."""
        loaded = path.data if isinstance(path, (Loaded, Rewritten)) else None
        meta = file_meta(path if isinstance(path, Path) else path.path, loaded)
        context_id = self.context_id(meta.sop_class_uid, meta.transfer_syntax)
        cmd = store_command(msg_id, meta.sop_class_uid, meta.sop_instance_uid, originator)
        parts: list[bytes | memoryview] | None = None
        if isinstance(path, Rewritten) and loaded is not None:
            parts = [path.head, loaded[path.tail :]]
        elif isinstance(path, Loaded):
            parts = [path.data[meta.offset :]]
        try:
            if parts is not None:  # nothing read again: the PDVs are views of the loaded bytes
                self.stream.send(context_id, cmd, parts, 0, pace)
            else:
                assert not isinstance(path, Loaded)  # (for mypy: parts were made of it)
                with open_data(path, meta.offset) as (data, length):
                    self.stream.send(context_id, cmd, data, length, pace)
            rsp = self.stream.read()
        except (OSError, ValueError, PeerClosed, ProtocolError, Released) as exc:
            LOG.warning("onward association lost: %s", exc or type(exc).__name__)
            self.abort()
            return None
        status = rsp.command.get("Status")
        if (
            rsp.field != C_STORE_RSP
            or int(rsp.command.get("MessageIDBeingRespondedTo", -1)) != msg_id
            or not isinstance(status, int)
        ):
            LOG.warning("onward association: unexpected 0x%04X instead of the C-STORE-RSP", rsp.field)
            self.abort()
            return None
        return status  # a status code only: no pydicom Dataset per instance (29 us, issue 29)

    def find(self, sop_class: str, identifier: bytes, msg_id: int) -> Iterator[tuple[int, bytes | None]]:
        """C-FIND (PS3.4 C.4.1): (status, encoded identifier) per response, the final one last.
        A lost association raises AssociationFailed (after aborting it)."""
        cmd = _request(C_FIND_RQ, sop_class, msg_id)
        try:
            self.stream.send(self.context_id(sop_class), cmd, identifier)
            while True:
                msg = self.stream.read()
                if msg.field != C_FIND_RSP:
                    raise ProtocolError(f"command 0x{msg.field:04X} during C-FIND")
                code = int(msg.command.Status)
                yield code, msg.data
                if code not in (Status.PENDING, Status.PENDING_WARNING):  # Pending (PS3.4 C.4.1.1.4)
                    return
        except (OSError, ValueError, PeerClosed, ProtocolError, Released) as exc:
            self.abort()
            raise AssociationFailed(f"C-FIND association lost: {exc or type(exc).__name__}") from exc

    def get(
        self, sop_class: str, identifier: bytes, msg_id: int, on_store: Callable[[Message, Path], int]
    ) -> Dataset | None:
        """C-GET (PS3.4 C.4.3): send the request, serve the archive's C-STOREs on this association
        with ``on_store`` (it owns the file; returns the status), return the final response's status
        data set (None if the association failed)."""
        return self._retrieve("GET", _request(C_GET_RQ, sop_class, msg_id), sop_class, identifier, on_store)

    def move(self, sop_class: str, destination: str, identifier: bytes, msg_id: int) -> Dataset | None:
        """C-MOVE (PS3.4 C.4.2) to ``destination``: the archive stores on an association of its own,
        this one carries only the responses; the final response's status data set (None if the
        association failed). Pending responses are read and dropped: nobody waits on them."""
        cmd = _request(C_MOVE_RQ, sop_class, msg_id)
        cmd["MoveDestination"] = destination  # (0000,0600) AE, PS3.7 9.3.4.1
        return self._retrieve("MOVE", cmd, sop_class, identifier, None)

    def _retrieve(
        self,
        name: str,
        cmd: dict[str, Any],
        sop_class: str,
        identifier: bytes,
        on_store: Callable[[Message, Path], int] | None,
    ) -> Dataset | None:
        response = C_GET_RSP if name == "GET" else C_MOVE_RSP
        try:
            context_id = self.context_id(sop_class)
            self._outstanding = (context_id, int(cmd["MessageID"]))
            self.stream.send(context_id, cmd, identifier)
            while True:
                msg = self.stream.read()
                if on_store is not None and msg.field == C_STORE_RQ and msg.path is not None:
                    status = on_store(msg, msg.path)
                    self.stream.respond(msg, C_STORE_RSP, status)
                    continue
                if msg.field != response:
                    raise ProtocolError(f"command 0x{msg.field:04X} during C-{name}")
                code = int(msg.command.Status)
                if code in (Status.PENDING, Status.PENDING_WARNING):  # Pending (PS3.4 C.4.2.1.5, C.4.3.1.4)
                    continue
                return _status(msg.command)
        except (OSError, ValueError, PeerClosed, ProtocolError, Released) as exc:
            if not self.is_aborted:
                LOG.warning("C-%s association lost: %s", name, exc or type(exc).__name__)
            self.abort()
            return None
        finally:
            self._outstanding = None

    def cancel(self) -> bool:
        """C-CANCEL-RQ (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3) for the C-GET/C-MOVE in progress, from any
        thread; the reading thread then gets the archive's final response (Cancel, 0xFE00). False
        when there is nothing to cancel or the request could not be written."""
        outstanding = self._outstanding
        if outstanding is None or not self.is_established:
            return False
        context_id, msg_id = outstanding
        try:
            self.stream.send(
                context_id,
                {
                    "CommandField": C_CANCEL_RQ,
                    "MessageIDBeingRespondedTo": msg_id,
                    "CommandDataSetType": NO_DATA_SET,
                },
            )
        except OSError:
            return False
        LOG.debug("C-CANCEL sent for message %d", msg_id)
        return True

    # -- ending ----------------------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE (PS3.8 9.3.6); aborts if the peer does not confirm."""
        if not self.is_established:
            return
        try:
            self.sock.sendall(release_rq())
            while True:
                try:
                    self.stream.read()  # a late message: ignore it and wait for the RP
                except Released as end:
                    if not end.request:
                        break
                    raise ProtocolError("release collision") from None
        except (OSError, ValueError, PeerClosed, ProtocolError):
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        """A-ABORT (PS3.8 9.3.8) and close; safe from any thread, idempotent, nothing once closed."""
        if (not self.is_established and self.is_aborted) or self._closed.locked():
            return
        self.is_aborted = True
        with contextlib.suppress(OSError):
            self.sock.sendall(abort(0x00, 0x00))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._close()

    def _close(self) -> None:
        self.is_established = False
        if self._closed.acquire(blocking=False):
            self.stream.close()
            with contextlib.suppress(OSError):
                self.sock.close()


def file_meta(path: Path, data: memoryview | None = None) -> FileMeta:
    """The file meta of ``path`` (:func:`read_file_meta`, from ``data`` when the file is loaded;
    pydicom's reader when that declines)."""
    try:
        return read_file_meta(path) if data is None else parse_file_meta(data)
    except ValueError:
        meta, offset = split_dataset(path)
        return FileMeta(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            offset,
        )


def _request(field: int, sop_class: str, msg_id: int) -> dict[str, Any]:
    """A C-FIND/C-GET/C-MOVE request command set with an identifier to follow (PS3.7 9.3.2.1,
    9.3.3.1, 9.3.4.1)."""
    return {
        "AffectedSOPClassUID": sop_class,
        "CommandField": field,
        "MessageID": msg_id,
        "Priority": PRIORITY_MEDIUM,
        "CommandDataSetType": DATA_SET_PRESENT,
    }


def _status(command: Command) -> Dataset:
    """The status elements of a response (PS3.7 C.4) as ``send_c_*`` returns them."""
    status = Dataset()
    status.Status = int(command.Status)
    for keyword in (
        "ErrorComment",
        "ErrorID",
        "NumberOfRemainingSuboperations",
        "NumberOfCompletedSuboperations",
        "NumberOfFailedSuboperations",
        "NumberOfWarningSuboperations",
    ):
        if keyword in command:
            setattr(status, keyword, command[keyword])
    return status


__all__ = ["AssociationFailed", "RawAssociation"]


def _association_rq(
    calling_ae: str,
    called_ae: str,
    contexts: list[PresentationContext],
    roles: list[SCP_SCU_RoleSelectionNegotiation],
    max_pdu: int,
) -> tuple[A_ASSOCIATE, list[PresentationContext]]:
    """The A-ASSOCIATE request and its presentation contexts, numbered 1, 3, 5… (PS3.8 9.3.2.2)."""
    requested = []
    for i, cx in enumerate(contexts):
        item = PresentationContext()
        item.context_id = 2 * i + 1
        item.abstract_syntax = cx.abstract_syntax
        item.transfer_syntax = list(cx.transfer_syntax)
        requested.append(item)
    rq = A_ASSOCIATE()
    rq.application_context_name = APPLICATION_CONTEXT
    rq.calling_ae_title = calling_ae
    rq.called_ae_title = called_ae
    rq.presentation_context_definition_list = requested
    rq.user_information = [*user_information(max_pdu), *roles]
    return rq, requested


def _negotiate(
    sock: socket.socket,
    reader: PduReader,
    rq: A_ASSOCIATE,
    requested: list[PresentationContext],
    roles: list[SCP_SCU_RoleSelectionNegotiation],
    called_ae: str,
) -> tuple[list[PresentationContext], int]:
    """Send the A-ASSOCIATE-RQ and read the answer: the accepted contexts and the peer's maximum
    PDU length (0: none given). Raises AssociationFailed on a rejection, an unexpected PDU or no
    accepted context (then after an A-ABORT); socket and PDU errors propagate."""
    pdu = RqPdu()
    pdu.from_primitive(rq)
    sock.sendall(pdu.encode())
    pdu_type, length = reader.header()
    body = PDU_HEADER.pack(pdu_type, length) + reader.body(length)
    if pdu_type == A_ASSOCIATE_RJ:
        rj = RjPdu()
        rj.decode(body)
        raise AssociationFailed(f"{called_ae} rejected the association ({rj.reason_str})", rejected=True)
    if pdu_type != A_ASSOCIATE_AC:
        raise AssociationFailed(f"{called_ae} answered PDU type 0x{pdu_type:02X} to A-ASSOCIATE-RQ")
    ac_pdu = AcPdu()
    ac_pdu.decode(body)
    ac = ac_pdu.to_primitive()
    ac_roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in ac.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
    }
    rq_roles = {r.sop_class_uid: (r.scu_role, r.scp_role) for r in roles}
    for cx in requested:
        if cx.abstract_syntax in rq_roles:
            scu, scp = rq_roles[cx.abstract_syntax]
            cx.scu_role, cx.scp_role = bool(scu), bool(scp)
    results = negotiate_as_requestor(requested, ac.presentation_context_definition_results_list, ac_roles)
    accepted = [cx for cx in results if cx.result == 0x00]
    if not accepted:
        with contextlib.suppress(OSError):
            sock.sendall(abort(0x00, 0x00))
        raise AssociationFailed(f"{called_ae} accepted no presentation context")
    peer_max = next(
        (
            int(item.maximum_length_received or 0)
            for item in ac.user_information
            if isinstance(item, MaximumLengthNotification)
        ),
        0,
    )
    return accepted, peer_max
