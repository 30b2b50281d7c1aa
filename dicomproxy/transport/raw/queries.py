"""C-FIND and C-ECHO associations served on the raw socket (PS3.4 C.4.1, A.4; PS3.7 9.1.2, 9.1.5).

Why (issue 29): under pynetdicom every C-FIND crosses two polling threads — the DUL reactor that
reads and writes the socket, the association reactor that takes decoded messages off a queue —
each sleeping 1 ms between looks, each needing the GIL to wake. While C-MOVEs keep the process busy
every such wake-up waits for the GIL, and a keyed C-FIND on the 1 M-row view took 41–52 ms at p95
instead of 11–14 ms. Here the thread that accepted the connection does everything in order: read
the request, run the query, encode and write each answer — no queue, no poll, no other thread.

What is taken: an association whose every proposed abstract syntax is Verification or a
Patient/Study Root C-FIND model (:data:`QUERY_SYNTAXES`) on plain TCP, as seen in the peeked
A-ASSOCIATE-RQ (:mod:`dicomproxy.transport.intake`). An association that also proposes C-MOVE,
C-GET or storage stays pynetdicom's, as does every TLS one. The answers themselves come from the
callbacks (the same C-FIND and C-ECHO code pynetdicom's handlers run, :mod:`dicomproxy.handlers`).

A C-CANCEL-RQ (PS3.7 9.3.2.3) is looked for after each answer sent: when bytes wait on the
socket, the next message is read; a C-CANCEL naming the running C-FIND makes the callback's
``cancelled()`` true, and it answers Cancel (0xFE00). Asynchronous operations are never
negotiated (PS3.7 D.3.3.3), so anything else arriving during a C-FIND breaks the protocol: A-ABORT.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext

from dicomproxy.status import Status, carries_error_comment, is_pending
from dicomproxy.transport.raw.acceptance import Gate, RawAcceptor
from dicomproxy.transport.raw.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_FIND_RQ,
    C_FIND_RSP,
    DATA_SET_PRESENT,
    NO_DATA_SET,
    Message,
    MessageStream,
    Released,
)
from dicomproxy.transport.raw.pdu import PduReader, ProtocolError, release_rp
from dicomproxy.transport.raw.sender import max_pdv

LOG = logging.getLogger("dicomproxy.fastpath")

VERIFICATION = "1.2.840.10008.1.1"
#: Patient Root and Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.1.1.1, C.6.2.1.1).
FIND_MODELS = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"})
QUERY_SYNTAXES = frozenset({VERIFICATION, *FIND_MODELS})


@dataclass(frozen=True)
class FindRequest:
    """One received C-FIND-RQ (PS3.7 Table 9.1-2) with its identifier, not decoded yet."""

    calling_ae: str
    address: tuple[str, int]
    sop_class_uid: str
    message_id: int
    data: bytes
    transfer_syntax: str

    def identifier(self) -> Dataset:
        """The identifier as a data set (pynetdicom's decoder: what ``event.identifier`` gives)."""
        syntax = UID(self.transfer_syntax)
        return decode(BytesIO(self.data), syntax.is_implicit_VR, syntax.is_little_endian)


#: (request, cancelled) → the responses as pynetdicom's C-FIND handlers yield them:
#: (status code or a status data set, identifier or None), the final one last.
FindCallback = Callable[[FindRequest, Callable[[], bool]], Iterator[tuple[Any, Dataset | None]]]
#: calling AE title → the C-ECHO status.
EchoCallback = Callable[[str], int]


def claims(abstract_syntaxes: frozenset[str] | None) -> bool:
    """Whether an association proposing these abstract syntaxes is served here."""
    return bool(abstract_syntaxes and abstract_syntaxes <= QUERY_SYNTAXES)


class QueryAcceptor(RawAcceptor):
    """Serves C-FIND/C-ECHO-only associations (see the module docstring)."""

    kind = "query"

    def __init__(
        self,
        *,
        supported: list[PresentationContext],
        max_pdu: int,
        gate: Gate,
        on_find: FindCallback,
        on_echo: EchoCallback,
        acse_timeout: float,
        network_timeout: float | None,
    ) -> None:
        super().__init__([cx for cx in supported if str(cx.abstract_syntax) in QUERY_SYNTAXES], max_pdu, gate)
        self.on_find = on_find
        self.on_echo = on_echo
        self.acse_timeout = acse_timeout
        #: Seconds an idle association may stay silent (None: for ever), as pynetdicom's ``network_timeout``.
        self.network_timeout = network_timeout

    def _run(self, sock: socket.socket, address: tuple[str, int]) -> None:
        reader = PduReader(sock, buffer_size=64 * 1024)
        try:
            _QuerySession(self, sock, reader, address).run()
        finally:
            reader.close()


class _QuerySession:
    def __init__(
        self, owner: QueryAcceptor, sock: socket.socket, reader: PduReader, address: tuple[str, int]
    ) -> None:
        self.o = owner
        self.sock = sock
        self.reader = reader
        self.address = address
        self.calling = ""

    def run(self) -> None:
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.o.acse_timeout)
        answer = self.o.negotiate(self.sock, self.reader, self.address)
        if answer is None:
            return
        self.calling = answer.calling
        self.sock.settimeout(self.o.network_timeout)
        # the same line pynetdicom's associations get (dicomproxy.server)
        logging.getLogger("dicomproxy.server").info(
            "association accepted: %s from %s:%s", self.calling, self.address[0], self.address[1]
        )
        stream = MessageStream(
            self.sock, answer.contexts, None, max_pdv(answer.peer_max_pdu), reader=self.reader
        )
        try:
            while True:
                msg = stream.read()
                self._serve(stream, msg)
        except Released as end:
            if not end.request:
                raise ProtocolError("A-RELEASE-RP without our A-RELEASE-RQ") from None
            self.sock.sendall(release_rp())
            LOG.debug("query association from %s released", self.calling)

    def _serve(self, stream: MessageStream, msg: Message) -> None:
        syntax = str(stream.contexts[msg.context_id].abstract_syntax)
        if msg.field == C_ECHO_RQ and syntax == VERIFICATION:
            stream.respond(msg, C_ECHO_RSP, int(self.o.on_echo(self.calling)))
        elif msg.field == C_FIND_RQ and syntax in FIND_MODELS and msg.data is not None:
            self._find(stream, msg, syntax)
        elif msg.field == C_CANCEL_RQ:
            pass  # for an operation already answered: nothing to do (PS3.7 9.3.2.3)
        else:
            raise ProtocolError(f"command 0x{msg.field:04X} on context {syntax} of a query association")

    def _find(self, stream: MessageStream, msg: Message, sop_class: str) -> None:
        message_id = int(msg.command.get("MessageID", 0))
        syntax = UID(str(stream.contexts[msg.context_id].transfer_syntax[0]))
        request = FindRequest(self.calling, self.address, sop_class, message_id, msg.data or b"", str(syntax))
        watch = _CancelWatch(stream, self.reader, message_id)
        responses = self.o.on_find(request, watch)
        cork(self.sock, True)
        try:
            for status, identifier in responses:
                code, comment = _code_and_comment(status)
                command: dict[str, Any] = {
                    "AffectedSOPClassUID": sop_class,
                    "CommandField": C_FIND_RSP,
                    "MessageIDBeingRespondedTo": message_id,
                    "CommandDataSetType": NO_DATA_SET,
                    "Status": code,
                }
                if comment and carries_error_comment(code):
                    command["ErrorComment"] = comment[:64]
                if not is_pending(code):
                    stream.send(msg.context_id, command)
                    return
                raw = (
                    encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian)
                    if identifier is not None
                    else None
                )
                if raw is None:  # PS3.4 C.4.1.1.4: a Pending response carries its match
                    LOG.error("C-FIND answer from the query could not be encoded in %s", syntax.name)
                    command.update(
                        Status=Status.UNABLE_TO_PROCESS, ErrorComment="answer could not be encoded"
                    )
                    stream.send(msg.context_id, command)
                    return
                command["CommandDataSetType"] = DATA_SET_PRESENT
                stream.send(msg.context_id, command, bytes(raw))
                watch.look()
            # a generator that ends without a final status: Success, as pynetdicom does
            stream.send(
                msg.context_id,
                {
                    "AffectedSOPClassUID": sop_class,
                    "CommandField": C_FIND_RSP,
                    "MessageIDBeingRespondedTo": message_id,
                    "CommandDataSetType": NO_DATA_SET,
                    "Status": Status.SUCCESS,
                },
            )
        finally:
            cork(self.sock, False)
            close = getattr(responses, "close", None)
            if close is not None:
                close()


class _CancelWatch:
    """``cancelled()`` for the running C-FIND: true once a C-CANCEL-RQ naming it was read."""

    def __init__(self, stream: MessageStream, reader: PduReader, message_id: int) -> None:
        self.stream = stream
        self.reader = reader
        self.message_id = message_id
        self.seen = False

    def __call__(self) -> bool:
        return self.seen

    def look(self) -> None:
        """Read what waits on the socket, if anything: a C-CANCEL-RQ for this C-FIND, or the end."""
        while not self.seen and self.reader.waiting():
            msg = self.stream.read()  # Released / PeerClosed end the association (the caller's finally)
            if msg.field != C_CANCEL_RQ:
                raise ProtocolError(f"command 0x{msg.field:04X} while a C-FIND is answered")
            if int(msg.command.get("MessageIDBeingRespondedTo", -1)) == self.message_id:
                self.seen = True


def cork(sock: socket.socket, on: bool) -> None:
    """Linux ``TCP_CORK`` while a C-FIND's responses are written: the kernel sends full segments
    and the rest when it is uncorked after the final response (or after 200 ms), so a few answers
    and their final status reach the requester together — one wake-up of its reading thread, not
    one per message (with TCP_NODELAY each message would be a segment of its own)."""
    option = getattr(socket, "TCP_CORK", None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1 if on else 0)


def _code_and_comment(status: Any) -> tuple[int, str]:
    if isinstance(status, Dataset):
        return int(status.get("Status", Status.UNABLE_TO_PROCESS)), str(status.get("ErrorComment", "") or "")
    return int(status), ""


__all__ = ["QUERY_SYNTAXES", "EchoCallback", "FindCallback", "FindRequest", "QueryAcceptor", "claims"]
