"""C-ECHO SCP (PS3.4 A.4, PS3.7 9.1.5)."""

from __future__ import annotations

import logging

from pynetdicom import evt

from dicomproxy.context import AppContext

LOG = logging.getLogger("dicomproxy.echo")

SUCCESS = 0x0000


def handle_echo(event: evt.Event, ctx: AppContext) -> int:
    """Verification always succeeds once the association was accepted."""
    LOG.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return SUCCESS
