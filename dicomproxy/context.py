"""The application context: everything a DIMSE handler needs, bound in once.

Handlers receive this object as their bound argument (pynetdicom's ``(event, handler,
[args])`` form), never reach for globals. Services that are not configured or not built
yet are ``None`` and the handler answers with the matching DIMSE failure.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dicomproxy.access import RejectionLog
from dicomproxy.config import Config


@dataclass
class AppContext:
    config: Config
    #: Rate-limited log of rejected associations (one line per address per minute).
    rejections: RejectionLog = field(default_factory=RejectionLog)
    #: Set when the server starts draining; long handlers check it between instances.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: Exam view access (dicomproxy.view); None until built.
    view: Any = None
    #: C-FIND service (dicomproxy.view.service.FindService); None until built.
    find: Any = None
    #: Upstream PACS client of ``[pacs]`` (dicomproxy.pacs.client); None until built.
    pacs: Any = None
    #: Every archive's PacsClient by name (``[pacs]`` is "pacs"); empty until built.
    archives: dict[str, Any] = field(default_factory=dict)
    #: Job journal (dicomproxy.relay.journal); None until built.
    journal: Any = None
    #: Relay service (dicomproxy.relay.plan) for C-MOVE / C-GET; None until built.
    relay: Any = None
    #: Push mode (dicomproxy.push.service.PushService) when ``[push] enabled``; started by the server.
    push: Any = None

    def close(self) -> None:
        """Release pools and files held by the services (idempotent)."""
        for service in (self.relay, self.journal, self.pacs, self.view):
            close = getattr(service, "close", None)
            if callable(close):
                close()
