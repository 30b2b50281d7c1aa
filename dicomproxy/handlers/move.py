"""C-MOVE SCP (PS3.4 C.4.2), Patient Root and Study Root: relay from the PACS to a configured peer.

The handler yields :class:`~dicomproxy.qrservice.RetrieveResponse` objects (see
:mod:`dicomproxy.qrservice` for why this is not pynetdicom's stock generator protocol).
"""

from __future__ import annotations

from collections.abc import Iterator

from pynetdicom import evt

from dicomproxy.context import AppContext
from dicomproxy.errors import DicomServiceError, UnableToProcess
from dicomproxy.qrservice import RetrieveResponse
from dicomproxy.relay import retrieve_request


def handle_move(event: evt.Event, ctx: AppContext) -> Iterator[RetrieveResponse]:
    if ctx.relay is None:
        exc: DicomServiceError = UnableToProcess("relay not configured")
        yield RetrieveResponse(exc.status, comment=exc.comment)
        return
    try:
        req = retrieve_request(event, "move", ctx.config)
    except DicomServiceError as exc:
        yield RetrieveResponse(exc.status, comment=exc.comment)
        return
    cancelled = False

    def is_cancelled() -> bool:
        nonlocal cancelled  # event.is_cancelled is consumed on first read: remember it
        cancelled = cancelled or bool(event.is_cancelled)
        return cancelled

    yield from ctx.relay.move(req, is_cancelled, lambda: bool(event.assoc.is_established))
