"""The application context: everything a DIMSE handler needs, bound in once.

Handlers receive this object as their bound argument (pynetdicom's ``(event, handler,
[args])`` form), never reach for globals. Services that are not configured or not built
yet are ``None`` and the handler answers with the matching DIMSE failure. ``config`` is the
current one of ``settings`` (a reload replaces it): a handler reads it once per request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dicomproxy.access import RejectionLog
from dicomproxy.config import Config
from dicomproxy.config.holder import Settings

if TYPE_CHECKING:  # the services are built by dicomproxy.app; this module only names their types
    from dicomproxy.corrections.service import CorrectionService
    from dicomproxy.pacs.client import PacsClient
    from dicomproxy.push.service import PushService
    from dicomproxy.relay.commitments import CommitmentLedger
    from dicomproxy.relay.journal import Journal
    from dicomproxy.relay.plan import RelayService
    from dicomproxy.view.repository import ExamView
    from dicomproxy.view.service import FindService


@dataclass
class AppContext:
    #: The process's current Config (dicomproxy.config.holder); a reload replaces it.
    settings: Settings
    #: Rate-limited log of rejected associations (one line per address per minute).
    rejections: RejectionLog = field(default_factory=RejectionLog)
    #: Set when the server starts draining; long handlers check it between instances.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: Exam view access (dicomproxy.view); None until built.
    view: ExamView | None = None
    #: C-FIND service; None until built.
    find: FindService | None = None
    #: Upstream PACS client of ``[pacs]``; None until built.
    pacs: PacsClient | None = None
    #: Every archive's PacsClient by name (``[pacs]`` is "pacs"); empty until built.
    archives: dict[str, PacsClient] = field(default_factory=dict)
    #: Job journal; None until built.
    journal: Journal | None = None
    #: Relay service for C-MOVE / C-GET; None until built.
    relay: RelayService | None = None
    #: Push mode when ``[push] enabled``; started by the server.
    push: PushService | None = None
    #: Corrections after delivery (``[corrections] enabled``, push or not); started by the server.
    corrections: CorrectionService | None = None
    #: Storage Commitment ledger when a peer has ``storage_commitment``; None otherwise.
    commitments: CommitmentLedger | None = None

    @property
    def config(self) -> Config:
        """The current Config: read it once per association or request and keep that object."""
        return self.settings.current

    def close(self) -> None:
        """Release pools and files held by the services (idempotent)."""
        for service in (self.relay, self.journal, self.pacs, self.view):
            close = getattr(service, "close", None)
            if callable(close):
                close()
