"""The raw-socket :class:`~dicomproxy.transport.link.Link`: a :class:`RawAssociation` behind the seam."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext

from dicomproxy.transport.net import NoAssociation, Remote
from dicomproxy.transport.raw.dimse import Message
from dicomproxy.transport.raw.requestor import AssociationFailed, RawAssociation
from dicomproxy.transport.raw.wire import identifier_uids
from dicomproxy.transport.recycle import RecycledFiles
from dicomproxy.transport.rewritten import Loaded, Rewritten
from dicomproxy.transport.seam import IncomingStore, Pace, StoreHandler, Timeouts


class RawLink:
    """DIMSE requests on our own socket (:mod:`dicomproxy.transport.raw.requestor`)."""

    def __init__(self, assoc: RawAssociation, remote: Remote) -> None:
        self.assoc = assoc
        self.remote = remote

    @classmethod
    def open(
        cls,
        calling_ae: str,
        remote: Remote,
        contexts: Sequence[PresentationContext],
        *,
        timeouts: Timeouts,
        max_pdu: int = 0,
        roles: Sequence[Any] = (),
        store_dir: Path | None = None,
        recycled: RecycledFiles | None = None,
    ) -> RawLink:
        try:
            assoc = RawAssociation.open(
                remote.host,
                remote.port,
                calling_ae=calling_ae,
                called_ae=remote.ae_title,
                contexts=list(contexts),
                roles=list(roles),
                store_dir=store_dir,
                recycled=recycled,
                max_pdu=max_pdu,
                connect_timeout=timeouts.connect,
                acse_timeout=timeouts.acse,
                dimse_timeout=timeouts.dimse,
            )
        except AssociationFailed as exc:
            raise NoAssociation(remote, str(exc), rejected=exc.rejected) from exc
        return cls(assoc, remote)

    @property
    def is_established(self) -> bool:
        return self.assoc.is_established

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return self.assoc.accepted_contexts

    def find(
        self, sop_class: str, identifier: Dataset, msg_id: int
    ) -> Iterator[tuple[int | None, Dataset | None]]:
        syntax = self.assoc.syntax(sop_class)
        try:
            for code, data in self.assoc.find(sop_class, self.assoc.encode(sop_class, identifier), msg_id):
                ds = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian) if data else None
                yield code, ds
        except AssociationFailed:
            yield None, None

    def find_uids(
        self, sop_class: str, identifier: Dataset, msg_id: int, keywords: tuple[str, ...]
    ) -> Iterator[tuple[int | None, dict[str, str] | None]]:
        """:meth:`find` read by :func:`~dicomproxy.transport.raw.wire.identifier_uids`; pydicom
        only for an identifier that is not simple (or a Big Endian context)."""
        syntax = self.assoc.syntax(sop_class)
        tags = {int(tag_for_keyword(k) or 0): k for k in keywords}
        try:
            for code, data in self.assoc.find(sop_class, self.assoc.encode(sop_class, identifier), msg_id):
                if not data:
                    yield code, None
                    continue
                uids = identifier_uids(data, syntax.is_implicit_VR, tags) if syntax.is_little_endian else None
                if uids is None:
                    ds = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
                    uids = {k: str(ds.get(k, "") or "") for k in keywords}
                yield code, uids
        except AssociationFailed:
            yield None, None

    def move(self, sop_class: str, destination: str, identifier: Dataset, msg_id: int) -> int | None:
        status = self.assoc.move(sop_class, destination, self.assoc.encode(sop_class, identifier), msg_id)
        return None if status is None else int(status.Status)

    def get(self, sop_class: str, identifier: Dataset, msg_id: int, on_store: StoreHandler) -> int | None:
        contexts = self.assoc.stream.contexts

        def serve(msg: Message, path: Path) -> int:
            cmd = msg.command
            request = IncomingStore(
                self.remote.ae_title,
                str(cmd.get("AffectedSOPClassUID", "")),
                str(cmd.get("AffectedSOPInstanceUID", "")),
                str(contexts[msg.context_id].transfer_syntax[0]),
                (cmd.get("MoveOriginatorApplicationEntityTitle"), cmd.get("MoveOriginatorMessageID")),
            )
            return on_store(request, path)

        status = self.assoc.get(sop_class, self.assoc.encode(sop_class, identifier), msg_id, serve)
        return None if status is None else int(status.Status)

    def store(
        self,
        path: Path | Rewritten | Loaded,
        msg_id: int,
        originator: tuple[str, int] | None = None,
        pace: Pace | None = None,
    ) -> int | None:
        return self.assoc.store_file(path, msg_id, originator, pace)

    def cancel(self) -> bool:
        return self.assoc.cancel()

    def release(self) -> None:
        self.assoc.release()

    def abort(self) -> None:
        self.assoc.abort()

    def close(self) -> None:
        self.assoc.release()  # nothing when already released or aborted
