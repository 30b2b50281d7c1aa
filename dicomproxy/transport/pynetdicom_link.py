"""The pynetdicom :class:`~dicomproxy.transport.link.Link`: TLS, ``fast_path = false``, and the
cloud's own association on a C-GET (on which we send the C-STOREs, PS3.4 C.4.3.2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from dicomproxy.transport.pynetdicom_compat import bound_send_queue as compat_bound_send_queue
from dicomproxy.transport.pynetdicom_compat import peer_max_length, stream_datasets_to_files
from dicomproxy.transport.raw import sender
from dicomproxy.transport.rewritten import Loaded, Rewritten
from dicomproxy.transport.seam import IncomingStore, Pace, StoreHandler

#: Largest P-DATA PDU we send. A peer announcing 0 (unlimited, PS3.8 D.1) would otherwise get a
#: whole instance in one PDU, read into memory at once; a multi-GB WSI must stream (issue 8).
SEND_PDU_CAP = 4 * 1024 * 1024

#: Bytes of outgoing PDUs that may wait in pynetdicom's send queue of one association.
SEND_QUEUE_BYTES = 32 * 1024 * 1024


def cap_send_pdu(assoc: Association) -> None:
    """Send P-DATA PDUs of at most :data:`SEND_PDU_CAP` bytes on ``assoc``.

    The peer's Maximum Length (PS3.8 D.1) is a maximum, not a requirement: smaller PDUs are
    valid. pynetdicom fragments by the negotiated value it keeps in the peer's
    MaximumLengthNotification, so that recorded value is lowered (0 means unlimited).
    """
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    for item in peer.user_information:
        if (
            isinstance(item, MaximumLengthNotification)
            and not 0 < item.maximum_length_received <= SEND_PDU_CAP
        ):
            item.maximum_length_received = SEND_PDU_CAP


def bound_send_queue(assoc: Association, max_bytes: int = SEND_QUEUE_BYTES) -> None:
    """Make ``send_c_store`` wait while ``max_bytes`` of PDUs are queued on ``assoc`` (issue 8).

    pynetdicom's DIMSE provider puts every P-DATA PDU of a message into the DUL's unbounded
    ``to_provider_queue`` at once and the reactor thread sends them as the socket allows: a
    multi-GB slide read from the spool faster than the destination takes it would end up in
    memory (measured: peak RSS 400 MB for 500 MB). Per association, no library global patched.
    """
    pdu = peer_max_length(assoc)
    compat_bound_send_queue(assoc, max(4, max_bytes // (pdu or SEND_PDU_CAP)))


def _status(rsp: Dataset | None) -> int | None:
    return int(rsp.Status) if rsp is not None and "Status" in rsp else None


class PynetdicomLink:
    """DIMSE requests on a pynetdicom :class:`Association`.

    ``owns``: we opened it (release and shut its AE down on :meth:`close`); ``sends_stores``: our
    C-STOREs go on it (PDUs capped, send queue bounded); ``fast_send``: on plain TCP, a file's
    bytes are written to the socket directly (:mod:`dicomproxy.transport.raw.sender`) under the
    lock pynetdicom's own writes take.
    """

    def __init__(
        self, assoc: Association, *, owns: bool, sends_stores: bool = False, fast_send: bool = False
    ) -> None:
        stream_datasets_to_files()  # files in and out, never whole data sets in memory (idempotent)
        self.assoc = assoc
        self.owns = owns
        self.fast_send = fast_send
        if sends_stores:
            cap_send_pdu(assoc)
            bound_send_queue(assoc)
            if fast_send:
                sender.install_send_lock(assoc)

    @property
    def is_established(self) -> bool:
        return bool(self.assoc.is_established)

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return list(self.assoc.accepted_contexts)

    def find(
        self, sop_class: str, identifier: Dataset, msg_id: int
    ) -> Iterator[tuple[int | None, Dataset | None]]:
        for status, ds in self.assoc.send_c_find(identifier, sop_class, msg_id=msg_id):
            yield _status(status), ds

    def find_uids(
        self, sop_class: str, identifier: Dataset, msg_id: int, keywords: tuple[str, ...]
    ) -> Iterator[tuple[int | None, dict[str, str] | None]]:
        for code, ds in self.find(sop_class, identifier, msg_id):
            yield code, None if ds is None else {k: str(ds.get(k, "") or "") for k in keywords}

    def move(self, sop_class: str, destination: str, identifier: Dataset, msg_id: int) -> int | None:
        return self._final(self.assoc.send_c_move(identifier, destination, sop_class, msg_id=msg_id))

    def get(self, sop_class: str, identifier: Dataset, msg_id: int, on_store: StoreHandler) -> int | None:
        archive = self.assoc.acceptor.ae_title.strip()

        def serve(event: evt.Event) -> int:
            req: Any = event.request
            request = IncomingStore(
                archive,
                str(req.AffectedSOPClassUID),
                str(req.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
                (req.MoveOriginatorApplicationEntityTitle, req.MoveOriginatorMessageID),
            )
            return on_store(request, Path(event.dataset_path))

        self.assoc.bind(evt.EVT_C_STORE, serve)
        try:
            return self._final(self.assoc.send_c_get(identifier, sop_class, msg_id=msg_id))
        finally:
            self.assoc.unbind(evt.EVT_C_STORE, serve)

    @staticmethod
    def _final(responses: Iterator[tuple[Dataset, Any]]) -> int | None:
        """The final status of a C-MOVE/C-GET's responses; None when the association was lost."""
        last: int | None = None
        for status, _ in responses:
            code = _status(status)
            if code is None:
                return None
            last = code
        return last

    def store(
        self,
        path: Path | Rewritten | Loaded,
        msg_id: int,
        originator: tuple[str, int] | None = None,
        pace: Pace | None = None,
    ) -> int | None:
        if isinstance(path, Loaded):  # sent from its file, as pynetdicom sends files
            path = path.path
        if self.fast_send and sender.usable(self.assoc):
            return _status(sender.send_file(self.assoc, path, msg_id, originator, pace))
        kwargs: dict[str, Any] = {"msg_id": msg_id}
        if originator is not None:
            kwargs["originator_aet"], kwargs["originator_id"] = originator
        if isinstance(path, Path):
            size = path.stat().st_size if pace is not None else 0
            status = self.assoc.send_c_store(path, **kwargs)
        else:
            written = path.write(path.path.with_name(f"{path.path.stem}.send.dcm"))  # pynetdicom sends files
            size = path.stat_size()
            try:
                status = self.assoc.send_c_store(written, **kwargs)
            finally:
                written.unlink(missing_ok=True)
        if pace is not None:  # pynetdicom writes the PDUs (TLS, or no fast path): the file at once
            pace(size)
        return _status(status)

    def cancel(self) -> bool:
        """Not offered: the caller aborts a pynetdicom retrieval (its sub-operations end with it)."""
        return False

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def abort(self) -> None:
        self.assoc.abort()

    def close(self) -> None:
        if self.owns:
            self.release()
            self.assoc.ae.shutdown()
