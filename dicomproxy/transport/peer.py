"""Who is on the other end of an association we accepted, as the events name it (:class:`Peer`)."""

from __future__ import annotations

from typing import Any

from dicomproxy.events import Peer
from dicomproxy.transport.pynetdicom_compat import raw_socket  # pynetdicom internals only there


def peer_of(assoc: Any) -> Peer:
    """The requestor of a pynetdicom association (TLS subject when a client certificate was shown)."""
    req = assoc.requestor
    return Peer(str(req.ae_title).strip(), str(req.address), int(req.port or 0), tls_identity(assoc))


def tls_identity(assoc: Any) -> str:
    """The client certificate's subject (``CN=jobserver,O=...``), or "" (PS3.15 B.1)."""
    sock = raw_socket(assoc)
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return ""
    try:
        cert = getpeercert()
    except (OSError, ValueError):
        return ""
    if not cert:
        return ""
    parts = [f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ",".join(parts)
