"""What a C-MOVE/C-GET job answers its requester, one response at a time (PS3.4 C.4.2.1.4, C.4.3.1.4).

Produced by the relay, sent by :mod:`dicomproxy.handlers.qrservice` (which re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomproxy.status import Status


@dataclass
class RetrieveResponse:
    """One C-MOVE/C-GET response: status and sub-operation counts (PS3.4 C.4.2.1.4)."""

    status: int
    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    #: Failed SOP Instance UID List (0008,0058); sent with Warning/Failure/Cancel.
    failed_uids: list[str] = field(default_factory=list)
    #: Error Comment (0000,0902), sent with Failure statuses only; no patient data.
    comment: str = ""

    @property
    def is_pending(self) -> bool:
        return self.status == Status.PENDING
