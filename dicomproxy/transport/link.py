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
the relay (``pacs.client``, ``relay.forward``) sees only this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom.presentation import PresentationContext

from dicomproxy.config import TlsConfig
from dicomproxy.transport.net import NoAssociation, Remote, open_association
from dicomproxy.transport.tls import client_tls_args


@dataclass(frozen=True)
class IncomingStore:
    """A C-STORE-RQ the archive sends on our C-GET association (PS3.4 C.4.3.2; PS3.7 9.3.1.1)."""

    #: AE title of the archive that sent it (the association's acceptor).
    calling_ae: str
    sop_class_uid: str  # (0000,0002) Affected SOP Class UID
    sop_instance_uid: str  # (0000,1000) Affected SOP Instance UID
    transfer_syntax: str  # of the presentation context it came on
    #: (0000,1030) Move Originator AE Title and (0000,1031) Message ID, when present.
    originator: tuple[str | None, int | None] = (None, None)


#: Takes one received instance (the DICOM file at the path, now the handler's) and returns the
#: C-STORE response status (PS3.4 B.2.3).
StoreHandler = Callable[[IncomingStore, Path], int]


class Link(Protocol):
    """An established association on which the proxy is the requester of DIMSE operations."""

    @property
    def is_established(self) -> bool: ...

    @property
    def accepted_contexts(self) -> list[PresentationContext]: ...

    def find(
        self, sop_class: str, identifier: Dataset, msg_id: int
    ) -> Iterator[tuple[int | None, Dataset | None]]:
        """C-FIND (PS3.4 C.4.1): (status, identifier) per response; status None = association lost."""
        ...

    def move(self, sop_class: str, destination: str, identifier: Dataset, msg_id: int) -> int | None:
        """C-MOVE to ``destination`` (PS3.4 C.4.2): the final status, None if the association was lost.
        Pending responses are consumed."""
        ...

    def get(self, sop_class: str, identifier: Dataset, msg_id: int, on_store: StoreHandler) -> int | None:
        """C-GET (PS3.4 C.4.3): the archive's C-STOREs are answered by ``on_store``; the final status,
        None if the association was lost."""
        ...

    def store(self, path: Path, msg_id: int, originator: tuple[str, int] | None = None) -> int | None:
        """C-STORE the DICOM file at ``path`` as it is encoded (PS3.4 B.2): the response status,
        None if no response came. Raises ValueError when no accepted context fits the file."""
        ...

    def cancel(self) -> bool:
        """C-CANCEL the C-MOVE/C-GET in progress, from any thread (PS3.7 9.3.2.3); False when this
        transport cannot (the caller aborts instead)."""
        ...

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2); aborts if the peer does not confirm."""
        ...

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3), from any thread."""
        ...

    def close(self) -> None:
        """Release the association if we opened it and it is still up, and free what the link holds
        (idempotent). A link over the cloud's own association (C-GET) leaves it open."""
        ...


@dataclass(frozen=True)
class Timeouts:
    """Seconds for the association's phases (PS3.8 9.1.1 ARTIM for ``acse``)."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 60.0


def open_link(
    calling_ae: str,
    remote: Remote,
    contexts: Sequence[PresentationContext],
    *,
    timeouts: Timeouts = Timeouts(),
    max_pdu: int = 0,
    roles: Sequence[Any] = (),
    tls: TlsConfig | None = None,
    fast_path: bool = True,
    store_dir: Path | None = None,
    sends_stores: bool = False,
) -> Link:
    """Open a requestor association to ``remote`` as a :class:`Link` (raises :class:`NoAssociation`).

    Raw sockets when ``fast_path`` and plain TCP (``tls`` None); pynetdicom otherwise. ``roles``:
    SCP/SCU Role Selection items (PS3.7 D.3.3.4) for a C-GET; ``store_dir``: where the raw link
    writes instances received on it; ``sends_stores``: the link will carry our C-STOREs (pynetdicom's
    send queue is bounded and its PDUs capped for that).
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
