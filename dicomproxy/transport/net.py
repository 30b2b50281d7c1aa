"""Socket tuning and small SCU helpers shared by the server, the PACS client and the CLI.

TCP_NODELAY: pynetdicom 3.0.4 leaves Nagle on. Each DIMSE message then waits for the
peer's delayed ACK (~40 ms per instance, see dicom-notes.md). pynetdicom fires
``EVT_CONN_OPEN`` on both the requestor and the acceptor side once the TCP connection
exists, so we set the option there: no library patching.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomproxy.status import Status
from dicomproxy.transport.pynetdicom_compat import raw_socket, rejection

LOG = logging.getLogger("dicomproxy.net")

#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) in an A-ASSOCIATE-RQ.
MAX_CONTEXTS = 128


def storage_classes_for(known: list[str]) -> list[str]:
    """When the PACS did not name every SOP class (dcmqrscp returns no SOP Class UID at IMAGE
    level): the known ones, then pynetdicom's 120 common storage classes, 128 at most."""
    common = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    return list(dict.fromkeys([*known, *common]))[:MAX_CONTEXTS]


class _CallerOnlyDIMSE(DIMSEServiceProvider):
    """DIMSE provider of a requestor association whose reactor never takes a message.

    pynetdicom 3.0.4 race: ``send_c_store`` (likewise ``send_c_find/c_get/c_move``) pauses the
    association's reactor through ``_reactor_checkpoint`` and waits until ``_is_paused`` is
    true; but the reactor sets ``_is_paused = True`` *before* ``checkpoint.wait()`` and False
    after it, so the caller can see a stale True and send while the reactor runs on. The
    reactor's ``dimse.get_msg(block=False)`` then takes the response (dropped as "Received
    unexpected C-STORE service message") or the abort sentinel, and the caller waits out its
    DIMSE timeout. Seen once in ~2,000 onward C-STOREs (1 GB benchmark) and in the
    destination-abort test. On associations where we only call ``send_*`` (and C-GET's
    C-STOREs are served inside ``send_c_get``), the reactor has nothing to take: it gets nothing.
    """

    def get_msg(self, block: bool = False) -> Any:
        if threading.current_thread() is self.assoc:  # the association's own reactor thread
            return None, None
        return super().get_msg(block)


def guard_requestor(assoc: Association) -> Association:
    """Apply :class:`_CallerOnlyDIMSE` to a just-established requestor association."""
    if type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = _CallerOnlyDIMSE  # one method, no state
    return assoc


def _on_conn_open(event: evt.Event) -> None:
    """EVT_CONN_OPEN: switch Nagle off on the association's socket."""
    set_nodelay(raw_socket(event.assoc))


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. a socket already closed by the peer
        LOG.debug("TCP_NODELAY not set: %s", exc)


#: Bind these on every AE server and pass them to every ``AE.associate``.
NODELAY_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, _on_conn_open)]


@dataclass(frozen=True)
class Remote:
    """A DICOM peer we call."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def make_scu(
    ae_title: str,
    *,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    network_timeout: float | None = 60.0,
    max_pdu: int = 0,
) -> AE:
    """An AE for outgoing associations with our timeouts."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.connection_timeout = connect_timeout
    ae.network_timeout = network_timeout
    ae.maximum_pdu_size = max_pdu
    return ae


class NoAssociation(Exception):
    """No established association with a remote AE: refused, rejected or not reachable."""

    def __init__(self, remote: Remote, detail: str, *, rejected: bool = False, reason: str = "") -> None:
        super().__init__(f"{remote}: {detail}")
        self.remote = remote
        self.detail = detail
        self.rejected = rejected
        #: A-ASSOCIATE-RJ result, source and reason (PS3.8 9.3.4), when rejected.
        self.reason = reason

    @property
    def what(self) -> str:
        """What happened, for an error naming the peer: ``rejected the association`` (an
        A-ASSOCIATE-RJ, PS3.8 9.3.4) or ``cannot be reached (DETAIL)``."""
        return "rejected the association" if self.rejected else f"cannot be reached ({self.detail})"


def open_association(
    calling_ae: str,
    remote: Remote,
    *,
    contexts: Sequence[Any] | None = None,
    add_contexts: Callable[[AE], None] | None = None,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    network_timeout: float | None = 60.0,
    max_pdu: int = 0,
    tls_args: Sequence[Any] | None = None,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[tuple[Any, Any]] = (),
) -> Association:
    """The one place that opens a pynetdicom association as requestor (PS3.8 7.1).

    TCP_NODELAY on its socket, our timeouts, TLS when ``tls_args`` are given, and the
    requestor guard (:func:`guard_requestor`; it leaves requests the peer sends on the association —
    a Storage Commitment N-EVENT-REPORT, PS3.4 J.3.3 — to pynetdicom, which serves them in a thread
    of their own). Returns an established
    association (``assoc.ae.shutdown()`` after its release) or raises :class:`NoAssociation`.
    The raw-socket data path opens its associations with ``fastpath.RawAssociation.open``.
    """
    ae = make_scu(
        calling_ae,
        acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout,
        connect_timeout=connect_timeout,
        network_timeout=network_timeout,
        max_pdu=max_pdu,
    )
    if add_contexts is not None:
        add_contexts(ae)
    kwargs: dict[str, Any] = {
        "ae_title": remote.ae_title,
        "evt_handlers": [*NODELAY_HANDLERS, *evt_handlers],
    }
    if contexts is not None:
        kwargs["contexts"] = list(contexts)
    if tls_args:
        kwargs["tls_args"] = tuple(tls_args)
    if ext_neg:
        kwargs["ext_neg"] = list(ext_neg)
    assoc = ae.associate(remote.host, remote.port, **kwargs)
    if not assoc.is_established:
        ae.shutdown()
        rj = rejection(assoc)  # also a reject pynetdicom took for an abort (a fast peer)
        if rj is not None or assoc.is_rejected:
            reason = f"result={rj.result_str}, source={rj.source_str}, reason={rj.reason_str}" if rj else "?"
            raise NoAssociation(remote, f"association rejected ({reason})", rejected=True, reason=reason)
        raise NoAssociation(remote, "no association (connection refused, aborted or timed out)")
    return guard_requestor(assoc)


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    detail: str


def c_echo(
    calling_ae: str,
    remote: Remote,
    *,
    timeout: float = 10.0,
    tls_args: Sequence[Any] | None = None,
) -> EchoResult:
    """C-ECHO (PS3.4 A.4) a remote AE; never raises for network problems."""
    try:
        assoc = open_association(
            calling_ae,
            remote,
            add_contexts=lambda ae: ae.add_requested_context(Verification),
            acse_timeout=timeout,
            dimse_timeout=timeout,
            connect_timeout=timeout,
            tls_args=tls_args,
        )
    except NoAssociation as exc:
        if exc.rejected:
            return EchoResult(False, f"association rejected by {remote} ({exc.reason})")
        return EchoResult(False, f"no association with {remote} (connection refused, aborted or timed out)")
    try:
        status = assoc.send_c_echo()
        if status is None or "Status" not in status:
            return EchoResult(False, f"no C-ECHO response from {remote}")
        if status.Status != Status.SUCCESS:
            return EchoResult(False, f"C-ECHO to {remote} returned status 0x{status.Status:04X}")
        return EchoResult(True, f"C-ECHO to {remote} OK")
    finally:
        if assoc.is_established:
            assoc.release()
        assoc.ae.shutdown()
