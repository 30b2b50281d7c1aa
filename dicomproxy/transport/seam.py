"""The transport seam's vocabulary: :class:`Link` and what travels through it.

Defined below both implementations (:mod:`dicomproxy.transport.raw.link`,
:mod:`dicomproxy.transport.pynetdicom_link`) and :func:`dicomproxy.transport.link.open_link`,
which chooses between them; everyone else imports these names from :mod:`dicomproxy.transport.link`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom.presentation import PresentationContext

from dicomproxy.transport.rewritten import Loaded, Rewritten


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


#: Told the bytes of a C-STORE as they are written — per batch of PDUs (at most about 1 MiB,
#: ``raw.pdu.SEND_BATCH``) where we write the socket, else once for the whole file — and waits while
#: a rate cap is exceeded (:mod:`dicomproxy.relay.bandwidth`). What it returns is ignored.
Pace = Callable[[int], object]


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

    def find_uids(
        self, sop_class: str, identifier: Dataset, msg_id: int, keywords: tuple[str, ...]
    ) -> Iterator[tuple[int | None, dict[str, str] | None]]:
        """:meth:`find`, each identifier reduced to the UID-valued ``keywords`` as text ("" when
        absent): an IMAGE-level listing of thousands of instances without a Dataset per response."""
        ...

    def move(self, sop_class: str, destination: str, identifier: Dataset, msg_id: int) -> int | None:
        """C-MOVE to ``destination`` (PS3.4 C.4.2): the final status, None if the association was lost.
        Pending responses are consumed."""
        ...

    def get(self, sop_class: str, identifier: Dataset, msg_id: int, on_store: StoreHandler) -> int | None:
        """C-GET (PS3.4 C.4.3): the archive's C-STOREs are answered by ``on_store``; the final status,
        None if the association was lost."""
        ...

    def store(
        self,
        path: Path | Rewritten | Loaded,
        msg_id: int,
        originator: tuple[str, int] | None = None,
        pace: Pace | None = None,
    ) -> int | None:
        """C-STORE the DICOM file at ``path`` as it is encoded (PS3.4 B.2), or a file with its header
        rewritten (:class:`~dicomproxy.transport.rewritten.Rewritten`), or a file read into memory
        (:class:`~dicomproxy.transport.rewritten.Loaded`): the response status, None if
        no response came. Raises ValueError when no accepted context fits the file. ``pace`` is
        told the bytes written as they go (:data:`Pace`)."""
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
