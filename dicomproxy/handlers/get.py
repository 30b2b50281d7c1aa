"""C-GET SCP (PS3.4 C.4.3): the relay delivers on the requester's own association.

Per instance the syntax is chosen among those the requester accepted for the SOP class
(it proposed the storage contexts with SCP role selection, PS3.4 C.4.3.1).
"""

from __future__ import annotations

from collections.abc import Iterator

from pynetdicom import evt

from dicomproxy.context import AppContext
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.handlers.retrieve import CancelLatch, prepare


def handle_get(event: evt.Event, ctx: AppContext) -> Iterator[RetrieveResponse]:
    prepared = prepare(event, ctx, "get")
    if isinstance(prepared, RetrieveResponse):  # refused before any work (status + Error Comment)
        yield prepared
        return
    relay, req = prepared
    yield from relay.get(req, event.assoc, CancelLatch(event))
