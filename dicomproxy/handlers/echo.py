"""C-ECHO SCP (PS3.4 A.4, PS3.7 9.1.5)."""

from __future__ import annotations

import logging

from pynetdicom import evt

from dicomproxy.access import permitted
from dicomproxy.context import AppContext
from dicomproxy.errors import NotAuthorized

LOG = logging.getLogger("dicomproxy.echo")

SUCCESS = 0x0000


def handle_echo(event: evt.Event, ctx: AppContext) -> int:
    """C-ECHO on a pynetdicom association: :func:`echo_status`."""
    return echo_status(ctx, str(event.assoc.requestor.ae_title))


def echo_status(ctx: AppContext, calling: str) -> int:
    """Verification succeeds for peers allowed the "echo" service, else 0x0124 Not authorized."""
    if not permitted(ctx.config, calling, "echo"):
        LOG.warning("C-ECHO from %s refused: service not permitted for this peer", calling)
        return NotAuthorized.status
    LOG.info("C-ECHO from %s", calling)
    return SUCCESS
