"""What the C-MOVE and C-GET handlers share: the request check and the C-CANCEL latch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynetdicom import evt

from dicomproxy.context import AppContext
from dicomproxy.errors import DicomServiceError, UnableToProcess
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.relay.request import RetrieveRequest, retrieve_request

if TYPE_CHECKING:
    from dicomproxy.relay.plan import RelayService


def prepare(
    event: evt.Event, ctx: AppContext, kind: str
) -> tuple[RelayService, RetrieveRequest] | RetrieveResponse:
    """The relay and the normalised request, or the final failure response to send instead
    (PS3.4 C.4.2.1.5)."""
    try:
        if ctx.relay is None:
            raise UnableToProcess("relay not configured")
        return ctx.relay, retrieve_request(event, kind, ctx.config)
    except DicomServiceError as exc:
        return RetrieveResponse(exc.status, comment=exc.comment)


class CancelLatch:
    """``event.is_cancelled`` is consumed on first read (pynetdicom): remember a True."""

    def __init__(self, event: evt.Event) -> None:
        self.event = event
        self.seen = False

    def __call__(self) -> bool:
        self.seen = self.seen or bool(self.event.is_cancelled)
        return self.seen
