"""C-GET SCP (PS3.4 C.4.3): the relay delivers on the requester's own association.

Per instance the syntax is chosen among those the requester accepted for the SOP class
(it proposed the storage contexts with SCP role selection, PS3.4 C.4.3.1).
"""

from __future__ import annotations

from collections.abc import Iterator

from pynetdicom import evt

from dicomproxy.context import AppContext
from dicomproxy.errors import DicomServiceError, UnableToProcess
from dicomproxy.qrservice import RetrieveResponse
from dicomproxy.relay import retrieve_request


def handle_get(event: evt.Event, ctx: AppContext) -> Iterator[RetrieveResponse]:
    if ctx.relay is None:
        exc: DicomServiceError = UnableToProcess("relay not configured")
        yield RetrieveResponse(exc.status, comment=exc.comment)
        return
    try:
        req = retrieve_request(event, "get", ctx.config)
    except DicomServiceError as exc:
        yield RetrieveResponse(exc.status, comment=exc.comment)
        return
    cancelled = False

    def is_cancelled() -> bool:
        nonlocal cancelled  # event.is_cancelled is consumed on first read: remember it
        cancelled = cancelled or bool(event.is_cancelled)
        return cancelled

    yield from ctx.relay.get(req, event.assoc, is_cancelled)
