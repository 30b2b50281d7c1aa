"""Onward C-STORE of an encoded file written straight to the association's socket.

pynetdicom sends a file (``STORE_SEND_CHUNKED_DATASET``) as one ``P_DATA`` primitive per PDU,
each queued to the DUL reactor thread, encoded as a PDU object and sent from there: about
100 µs of Python per 16 kB PDU, on the same GIL as the receiving side of the relay. Here the
same bytes go out from the calling thread in batches of PDUs (:func:`pdu.message_pdus`); the
association, its negotiation and the response (read by pynetdicom's reactor as usual) stay
pynetdicom's. Used only on plain TCP: an ``SSLSocket`` must not be written by one thread while
the reactor reads it, so TLS associations keep pynetdicom's path.

Writes must not interleave with pynetdicom's own (a C-GET's pending responses go out through
the reactor while we send on the same association; PS3.7 6.3.1 forbids mixing fragments of two
messages): :func:`install_send_lock` makes the reactor's socket writes take the lock that
:func:`send_file` holds for a whole message.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu_primitives import MaximumLengthNotification

from dicomproxy.transport.pynetdicom_compat import install_send_lock as compat_install_send_lock
from dicomproxy.transport.pynetdicom_compat import raw_socket, send_lock_of
from dicomproxy.transport.raw.dimse import C_STORE_RQ, DATA_SET_PRESENT, PRIORITY_MEDIUM
from dicomproxy.transport.raw.pdu import message_pdus, send_paced
from dicomproxy.transport.raw.wire import encode_command
from dicomproxy.transport.rewritten import Rewritten, open_data

#: Largest data bytes per PDV when the peer announced 0 (unlimited, PS3.8 D.1).
DEFAULT_MAX_PDV = 4 * 1024 * 1024 - 6


def usable(assoc: Association) -> bool:
    """True when ``assoc`` runs on plain TCP and its reactor's writes are serialised with ours."""
    sock = raw_socket(assoc)
    return sock is not None and not isinstance(sock, ssl.SSLSocket) and send_lock_of(assoc) is not None


#: Serialise the reactor's socket writes on an association with :func:`send_file` (idempotent).
install_send_lock = compat_install_send_lock


def max_pdv(maximum_length: int) -> int:
    """Value bytes per PDV for a peer's Maximum Length (PS3.8 D.1): minus the 6-byte PDV header,
    at most :data:`DEFAULT_MAX_PDV` (also what 0 = unlimited gets)."""
    return min(maximum_length - 6, DEFAULT_MAX_PDV) if maximum_length > 6 else DEFAULT_MAX_PDV


def peer_max_pdv(assoc: Association) -> int:
    """:func:`max_pdv` for the peer of a pynetdicom association."""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    for item in peer.user_information:
        if isinstance(item, MaximumLengthNotification):
            return max_pdv(int(item.maximum_length_received or 0))
    return DEFAULT_MAX_PDV


def store_command(
    msg_id: int, sop_class: str, sop_instance: str, originator: tuple[str, int] | None
) -> dict[str, Any]:
    """The C-STORE-RQ command set (PS3.7 Table 9.3-1)."""
    cmd: dict[str, Any] = {
        "AffectedSOPClassUID": sop_class,
        "CommandField": C_STORE_RQ,
        "MessageID": msg_id,
        "Priority": PRIORITY_MEDIUM,
        "CommandDataSetType": DATA_SET_PRESENT,
        "AffectedSOPInstanceUID": sop_instance,
    }
    if originator is not None:
        cmd["MoveOriginatorApplicationEntityTitle"] = originator[0]
        cmd["MoveOriginatorMessageID"] = originator[1]
    return cmd


def send_file(
    assoc: Association,
    path: Path | Rewritten,
    msg_id: int,
    originator: tuple[str, int] | None = None,
    pace: Callable[[int], object] | None = None,
) -> Dataset | None:
    """C-STORE the encoded data set of the DICOM file ``path``; the response's status data set
    (as ``send_c_store`` returns it) or None when no response came (timeout, abort). ``pace`` is
    told each batch's bytes once written (a rate cap waits in it, the message's lock held: its
    PDUs must not interleave with another message's, PS3.7 6.3.1).

    Raises ValueError when no accepted context has the file's exact SOP class and transfer
    syntax, OSError when the socket fails (the association is aborted then).
    """
    lock = send_lock_of(assoc)
    if lock is None:
        raise ValueError("install_send_lock() was not applied to this association")
    meta, offset = split_dataset(path if isinstance(path, Path) else path.path)
    sop_class = str(meta.MediaStorageSOPClassUID)
    syntax = str(meta.TransferSyntaxUID)
    context_id = _context_id(assoc, sop_class, syntax)
    command = encode_command(
        store_command(msg_id, sop_class, str(meta.MediaStorageSOPInstanceUID), originator)
    )
    sock: Any = raw_socket(assoc)
    with open_data(path, offset) as (data, length):
        try:
            with lock:
                for batch in message_pdus(context_id, command, data, length, peer_max_pdv(assoc)):
                    send_paced(sock, batch, pace)
        except OSError:
            assoc.abort()
            raise
    _, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        return None
    status = Dataset()
    status.Status = getattr(rsp, "Status", None)
    if status.Status is None:
        return None
    for keyword in getattr(rsp, "STATUS_OPTIONAL_KEYWORDS", ()):
        value = getattr(rsp, keyword, None)
        if value is not None:
            setattr(status, keyword, value)
    return status


def _context_id(assoc: Association, sop_class: str, syntax: str) -> int:
    for cx in assoc.accepted_contexts:
        if str(cx.abstract_syntax) == sop_class and str(cx.transfer_syntax[0]) == syntax and cx.as_scu:
            return int(cx.context_id or 0)
    raise ValueError(f"no accepted presentation context for {sop_class} in {syntax}")
