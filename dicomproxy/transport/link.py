"""The one transport seam of the data path: the DIMSE operations the proxy requests on an association.

A :class:`Link` is an established association on which we send C-FIND, C-MOVE, C-GET (serving the
archive's C-STOREs on it) and C-STORE requests, cancel the retrieval in progress and end the
association (PS3.7 9.1, 9.3; PS3.4 C.4.1-C.4.3, B.2). Two implementations:

- :class:`~dicomproxy.transport.raw.link.RawLink` — plain TCP on our own sockets, no reactor
  threads (``[proxy] fast_path``, the default);
- :class:`~dicomproxy.transport.pynetdicom_link.PynetdicomLink` — pynetdicom's association: TLS,
  ``fast_path = false``, and the cloud's own association on a C-GET (we are its acceptor, yet
  send the C-STOREs).

:func:`open_link` is the one place that chooses between them and opens a requestor association;
the relay (``pacs.client``, ``relay.forward``) sees only this interface. The interface itself
(:class:`Link`, :class:`IncomingStore`, :data:`StoreHandler`, :class:`Timeouts`) is defined in
:mod:`dicomproxy.transport.seam`, below both implementations, and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pynetdicom.presentation import PresentationContext

from dicomproxy.config import TlsConfig
from dicomproxy.transport.net import NoAssociation, Remote, open_association
from dicomproxy.transport.recycle import RecycledFiles
from dicomproxy.transport.seam import IncomingStore, Link, StoreHandler, Timeouts
from dicomproxy.transport.tls import client_tls_args

_DEFAULT_TIMEOUTS = Timeouts()


def open_link(
    calling_ae: str,
    remote: Remote,
    contexts: Sequence[PresentationContext],
    *,
    timeouts: Timeouts = _DEFAULT_TIMEOUTS,
    max_pdu: int = 0,
    roles: Sequence[Any] = (),
    tls: TlsConfig | None = None,
    fast_path: bool = True,
    store_dir: Path | None = None,
    sends_stores: bool = False,
    recycled: RecycledFiles | None = None,
) -> Link:
    """Open a requestor association to ``remote`` as a :class:`Link` (raises :class:`NoAssociation`).

    Raw sockets when ``fast_path`` and plain TCP (``tls`` None); pynetdicom otherwise. ``roles``:
    SCP/SCU Role Selection items (PS3.7 D.3.3.4) for a C-GET; ``store_dir``: where the raw link
    writes instances received on it (overwriting ``recycled`` files when it has some);
    ``sends_stores``: the link will carry our C-STOREs (pynetdicom's send queue is bounded and its
    PDUs capped for that).
    """
    if fast_path and tls is None:
        from dicomproxy.transport.raw.link import RawLink

        return RawLink.open(
            calling_ae,
            remote,
            contexts,
            timeouts=timeouts,
            max_pdu=max_pdu,
            roles=roles,
            store_dir=store_dir,
            recycled=recycled,
        )
    from dicomproxy.transport.pynetdicom_link import PynetdicomLink

    assoc = open_association(
        calling_ae,
        remote,
        contexts=contexts,
        acse_timeout=timeouts.acse,
        dimse_timeout=timeouts.dimse,
        connect_timeout=timeouts.connect,
        network_timeout=timeouts.dimse,
        max_pdu=max_pdu,
        tls_args=client_tls_args(tls, remote.host),
        ext_neg=list(roles),
    )
    return PynetdicomLink(assoc, owns=True, sends_stores=sends_stores, fast_send=fast_path)


__all__ = ["IncomingStore", "Link", "NoAssociation", "StoreHandler", "Timeouts", "open_link"]
