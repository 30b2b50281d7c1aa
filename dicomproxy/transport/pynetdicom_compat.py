"""Every use of pynetdicom's *internals* — private names, process-wide switches, attributes
patched on its objects — in one place, each with a test in ``tests/test_pynetdicom_compat.py``
that fails loudly when a pynetdicom upgrade changes it (checked against pynetdicom 3.0.x).

Public pynetdicom API (``AE``, ``Association.send_c_*``, ``evt``, ``build_context``, PDU and
primitive classes) is used where it is needed; what is here is what pynetdicom does not promise.
The C-MOVE/C-GET acceptor adapters that subclass pynetdicom's association machinery
(``RelayAssociation``, the request handler and server) live in :mod:`dicomproxy.handlers.qrservice`,
the requestor guard (``_CallerOnlyDIMSE``) in :mod:`dicomproxy.transport.net`; they go through the
helpers below for the private attributes they read.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.sop_class import _STORAGE_CLASSES

#: Attribute names we add to pynetdicom's DUL objects (ours, prefixed so they never collide).
_SEND_LOCK = "_dicomproxy_send_lock"
_BOUNDED = "_dicomproxy_bounded"


# --- process-wide switches (pynetdicom._config) ---------------------------------------------------


def stream_datasets_to_files() -> None:
    """``STORE_RECV_CHUNKED_DATASET``: each received C-STORE data set goes straight to a file
    (``event.dataset_path``); ``STORE_SEND_CHUNKED_DATASET``: ``send_c_store(path)`` sends a
    file's bytes without decoding them (it needs an accepted context with the file's exact
    transfer syntax). Memory stays flat whatever the instance size."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True


def log_identifiers(enabled: bool) -> None:
    """Whether pynetdicom may log request/response identifiers (patient data) at all."""
    _config.LOG_REQUEST_IDENTIFIERS = enabled
    _config.LOG_RESPONSE_IDENTIFIERS = enabled


# --- registries ---------------------------------------------------------------------------------------


def storage_classes() -> Mapping[str, str]:
    """pynetdicom's Storage SOP Class registry: keyword → UID (``sop_class._STORAGE_CLASSES``)."""
    return _STORAGE_CLASSES


# --- an association's insides ---------------------------------------------------------------------


def raw_socket(assoc: Association) -> Any:
    """The TCP (or TLS) socket under ``assoc`` (``dul.socket.socket``); None once closed."""
    return getattr(getattr(assoc.dul, "socket", None), "socket", None)


@contextlib.contextmanager
def reactor_poll(assoc: Association, seconds: float) -> Iterator[None]:
    """Let ``assoc``'s DUL reactor sleep ``seconds`` between idle polls (``dul._run_loop_delay``,
    1 ms by default: ~1,000 wake-ups a second, each taking the GIL) for the time of the block."""
    dul = assoc.dul
    before = dul._run_loop_delay
    dul._run_loop_delay = seconds
    try:
        yield
    finally:
        dul._run_loop_delay = before


def rejection(assoc: Association) -> A_ASSOCIATE | None:
    """The peer's A-ASSOCIATE-RJ (PS3.8 9.3.4) for a requestor association that is not established,
    or None. pynetdicom 3.0.4 races here: ``negotiate_association`` looks at ``socket._is_connected``
    after sending the A-ASSOCIATE-RQ; when the peer's reject has already arrived and the DUL thread
    has closed the connection (a fast acceptor, a busy caller), it aborts instead — ``is_aborted``,
    not ``is_rejected`` — leaving the reject primitive unread in ``dul.to_user_queue``."""
    if assoc.is_rejected:
        return cast(A_ASSOCIATE, assoc.acceptor.primitive)
    for primitive in list(assoc.dul.to_user_queue.queue):
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            return primitive
    return None


def provider_events_waiting(assoc: Association) -> bool:
    """Whether the DUL has received PDUs the reactor has not taken yet (``dul.to_provider_queue``)."""
    return not assoc.dul.to_provider_queue.empty()


def valid_context_id(assoc: Association, abstract_syntax: str, role: str) -> int:
    """The context ID pynetdicom would use for ``abstract_syntax`` in ``role`` ("scu"/"scp")
    (``Association._get_valid_context``): needed to C-CANCEL on the request's context."""
    context_id = assoc._get_valid_context(abstract_syntax, "", role).context_id
    if context_id is None:  # pragma: no cover - accepted contexts always have an ID
        raise ValueError(f"no context ID for {abstract_syntax}")
    return int(context_id)


def accepted_context(assoc: Association, context_id: int) -> Any:
    """The accepted presentation context with this ID, or None (``Association._accepted_cx``)."""
    return assoc._accepted_cx.get(context_id)


def send_lock_of(assoc: Association) -> threading.Lock | None:
    """The lock :func:`install_send_lock` put on ``assoc``, if any."""
    lock = getattr(assoc.dul, _SEND_LOCK, None)
    return lock if isinstance(lock, type(threading.Lock())) else None


def install_send_lock(assoc: Association) -> None:
    """Serialise the reactor's socket writes on ``assoc`` with ours (wraps the transport's
    ``send``), so whole PDUs we write on the raw socket never interleave with its (idempotent)."""
    dul = assoc.dul
    if send_lock_of(assoc) is not None or dul.socket is None:
        return
    lock = threading.Lock()
    transport = dul.socket
    send = transport.send

    def locked_send(bytestream: bytes) -> None:
        with lock:
            send(bytestream)

    transport.send = locked_send  # type: ignore[method-assign]
    setattr(dul, _SEND_LOCK, lock)


def peer_max_length(assoc: Association) -> int:
    """The peer's Maximum Length (PS3.8 D.1) as negotiated; 0 = unlimited."""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return next(
        (
            int(item.maximum_length_received)
            for item in peer.user_information
            if isinstance(item, MaximumLengthNotification)
        ),
        0,
    )


def bound_send_queue(assoc: Association, max_items: int) -> None:
    """Make ``send_c_store`` wait while ``max_items`` PDUs are queued on ``assoc``.

    pynetdicom's DIMSE provider puts every P-DATA PDU of a message into the DUL's unbounded
    ``to_provider_queue`` at once (``dul.send_pdu``) and the reactor sends them as the socket
    allows; a multi-GB instance would otherwise sit in memory. Per association (idempotent)."""
    dul = assoc.dul
    if getattr(dul, _BOUNDED, False):  # a cloud's association serving several C-GETs
        return
    send_pdu = dul.send_pdu
    queue = dul.to_provider_queue

    def bounded(primitive: Any) -> None:
        while queue.qsize() >= max_items and dul.is_alive() and not assoc.is_aborted:
            time.sleep(0.0005)
        send_pdu(primitive)

    dul.send_pdu = bounded  # type: ignore[method-assign]
    setattr(dul, _BOUNDED, True)
