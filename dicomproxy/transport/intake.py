"""What arrives on the listening port, looked at before any association object exists.

pynetdicom creates an Association for every TCP connection and, when the first bytes are not a
valid A-ASSOCIATE-RQ (a port scan, a load balancer's TCP health check, garbage), its DUL
aborts without telling the association, which then holds one of ``maximum_associations``
slots until ``acse_timeout`` (30 s) passes (measured: 40 garbage connections → 40 slots held,
the next real peer rejected with "local limit exceeded"). :func:`inspect` therefore peeks
(``MSG_PEEK``: nothing is consumed) until the whole first PDU is there and decodes it with
pynetdicom's own A-ASSOCIATE-RQ class (PS3.8 9.3.2) — or, for an RQ too large to sit unread in
the receive window, checks its fixed fields. Anything else is closed at once with one
(rate-limited) log line. The same look decides whether the raw store acceptor
(:mod:`dicomproxy.transport.raw.receiver`) takes the association.

Plain TCP only: a TLS socket cannot be peeked (its records are encrypted); TLS connections go
to pynetdicom as before.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from pynetdicom.pdu import A_ASSOCIATE_RQ as RqPdu

from dicomproxy.access import RejectionLog
from dicomproxy.transport.raw.pdu import A_ASSOCIATE_RQ
from dicomproxy.transport.raw.pdu import PDU_HEADER as _HEADER
from dicomproxy.transport.raw.queries import claims
from dicomproxy.transport.raw.receiver import StoreAcceptor

#: PS3.8 Table 9-11: version, reserved, called and calling AE titles, reserved = 68 bytes before the items.
MIN_RQ_LENGTH = 68
#: 128 presentation contexts with many transfer syntaxes stay well below this (PS3.8 9.3.2).
MAX_RQ_LENGTH = 1024 * 1024
#: End of the fixed fields (header 6 + 68).
_FIXED_END = 74
#: Seconds without new bytes after which a partly peeked RQ is judged by its fixed fields: the
#: whole PDU cannot always be peeked (it may exceed the receive window while nothing is read).
STALL = 0.05


@dataclass(frozen=True)
class FirstPdu:
    """A decoded A-ASSOCIATE-RQ still waiting in the socket (``calling``/``called`` stripped)."""

    calling: str
    called: str
    #: The proposed presentation contexts' abstract syntaxes; None when only the fixed fields were read.
    abstract_syntaxes: frozenset[str] | None = None


def inspect(sock: socket.socket, timeout: float) -> FirstPdu | str:
    """The A-ASSOCIATE-RQ waiting on ``sock``, or the reason it is not one."""
    deadline = time.monotonic() + timeout
    old = sock.gettimeout()
    want = _HEADER.size
    seen, changed = 0, time.monotonic()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"no complete A-ASSOCIATE-RQ within {timeout:g} s"
            sock.settimeout(left)
            try:
                data = sock.recv(want, socket.MSG_PEEK)
            except TimeoutError:
                return f"no complete A-ASSOCIATE-RQ within {timeout:g} s"
            except OSError as exc:
                return f"connection failed: {exc}"
            if not data:
                return "closed without sending an A-ASSOCIATE-RQ"
            if data[0] != A_ASSOCIATE_RQ:
                return f"first PDU is type 0x{data[0]:02X}, not an A-ASSOCIATE-RQ"
            if len(data) >= _HEADER.size:
                _, length = _HEADER.unpack_from(data)
                if not MIN_RQ_LENGTH <= length <= MAX_RQ_LENGTH:
                    return f"A-ASSOCIATE-RQ of implausible length {length}"
                want = _HEADER.size + length
            if len(data) >= want:
                return _decode(data[:want])
            now = time.monotonic()
            if len(data) != seen:
                seen, changed = len(data), now
            elif len(data) >= _FIXED_END and now - changed > STALL:
                # A large RQ may not fit the receive window while nothing is read: check what we
                # have (header and fixed fields) and let pynetdicom read the rest.
                return _fixed_part(data)
            time.sleep(0.001)  # the rest is on its way (or never comes: the deadline ends it)
    finally:
        sock.settimeout(old)


def _fixed_part(data: bytes) -> FirstPdu | str:
    """PS3.8 Table 9-11 fields before the variable items: protocol version (bit 0 set), called and
    calling AE titles (not all spaces)."""
    version = int.from_bytes(data[6:8], "big")
    called = data[10:26].decode("ascii", "replace").strip()
    calling = data[26:42].decode("ascii", "replace").strip()
    if not version & 1 or not called or not calling:
        return "malformed A-ASSOCIATE-RQ (fixed fields)"
    return FirstPdu(calling, called)


def _decode(raw: bytes) -> FirstPdu | str:
    try:
        pdu = RqPdu()
        pdu.decode(raw)
        rq = pdu.to_primitive()
        syntaxes = frozenset(str(cx.abstract_syntax) for cx in rq.presentation_context_definition_list)
        return FirstPdu(str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip(), syntaxes)
    except Exception as exc:  # pynetdicom raises ValueError, struct.error, IndexError, ...
        return f"malformed A-ASSOCIATE-RQ ({exc or type(exc).__name__})"


class QueryRoutes(Protocol):
    """Serves a C-FIND/C-ECHO-only connection: this process's raw query acceptor or the query
    process (:class:`dicomproxy.queryproc.parent.QueryRoute`)."""

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        """True when another process took the connection (the caller then only closes its copy)."""


class Intake:
    """Routes each plain-TCP connection: ``"store"`` (raw store acceptor), ``"query"`` (raw
    C-FIND/C-ECHO acceptor, :mod:`dicomproxy.transport.raw.queries`), ``"dicom"`` (pynetdicom) or
    None (closed: not a valid A-ASSOCIATE-RQ, logged via ``rejections``)."""

    def __init__(
        self,
        timeout: float,
        rejections: RejectionLog,
        acceptor: StoreAcceptor | None,
        queries: QueryRoutes | None = None,
    ) -> None:
        self.timeout = timeout
        self.rejections = rejections
        self.acceptor = acceptor
        self.queries = queries

    def route(
        self, sock: socket.socket, address: tuple[str, int]
    ) -> Literal["store", "query", "dicom"] | None:
        first = inspect(sock, self.timeout)
        if isinstance(first, str):
            self.rejections.warn(address[0], first)
            return None
        if self.acceptor is not None and self.acceptor.claim(first.calling):
            return "store"
        if self.queries is not None and claims(first.abstract_syntaxes):
            return "query"
        return "dicom"
