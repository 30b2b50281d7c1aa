"""The one vocabulary for DIMSE statuses, relay job kinds and job outcomes.

Every status the proxy sends or reads has a name here with the part of the standard it comes
from; logic compares names, never bare hex. :class:`Status` is an ``IntEnum``, so a member is
the integer pynetdicom and the wire expect.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """DIMSE status codes (PS3.7 Annex C; service-specific meanings in PS3.4)."""

    # --- general (PS3.7 C.1-C.5) ---
    SUCCESS = 0x0000  # PS3.7 C.1.1
    PENDING = 0xFF00  # PS3.7 C.1.3; C-FIND: matches continue, all optional keys supported
    PENDING_WARNING = 0xFF01  # PS3.4 C.4.1.1.4: matches continue, some optional keys not supported
    CANCEL = 0xFE00  # PS3.7 C.1.4: ended by C-CANCEL
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.7 Refused: SOP Class not supported
    NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x Refused: Not authorized

    # --- Query/Retrieve (PS3.4 C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.5 C-GET) ---
    OUT_OF_RESOURCES_MATCHES = 0xA701  # Refused: unable to calculate number of matches
    OUT_OF_RESOURCES_SUBOPS = 0xA702  # Refused: unable to perform sub-operations (all failed)
    MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move Destination unknown
    IDENTIFIER_MISMATCH = 0xA900  # Error: Identifier does not match SOP Class
    SUBOPS_WARNING = 0xB000  # Warning: sub-operations complete, one or more failures or warnings
    UNABLE_TO_PROCESS = 0xC000  # Failure: unable to process (0xCxxx)

    # --- ours, in the 0xCxxx "unable to process" range, each with an Error Comment ---
    VIEW_UNAVAILABLE = 0xC001  # the exam view's database failed
    PACS_UNAVAILABLE = 0xC002  # the PACS (an archive) could not be reached or failed
    DESTINATION_UNAVAILABLE = 0xC003  # the move destination refused or could not be reached
    UNROUTABLE = 0xC004  # no archive for the exam's Sysid/ExamineType
    CANNOT_TRANSCODE = 0xC010  # no accepted context can carry this instance
    HANDLER_ERROR = 0xC511  # pynetdicom's "exception in handler" code, kept for familiarity
    TOO_MANY_SUBOPS = 0xC516  # pynetdicom's code for > 65535 sub-operations (PS3.7 C.4.2: US counts)

    # --- Storage (PS3.4 B.2.3) ---
    STORE_OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (0xA7xx)
    STORE_CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (0xCxxx)


def is_pending(code: int | None) -> bool:
    """0xFF00 or 0xFF01 (PS3.7 C.1.3)."""
    return code in (Status.PENDING, Status.PENDING_WARNING)


def is_out_of_resources(code: int | None) -> bool:
    """A Storage 0xA7xx Refused: Out of Resources (PS3.4 B.2.3): worth sending again later."""
    return code is not None and (code & 0xFF00) == Status.STORE_OUT_OF_RESOURCES


def carries_error_comment(code: int) -> bool:
    """Failure and Refused statuses (0xAxxx, 0xCxxx) may carry an Error Comment (PS3.7 C.4)."""
    return (code & 0xF000) in (0xA000, 0xC000)


class JobKind(str, enum.Enum):
    """What a relay job serves (``jobs.kind`` in the journal)."""

    MOVE = "move"  # C-MOVE: sub-operations are C-STOREs to a move destination
    GET = "get"  # C-GET: C-STOREs back on the requester's association
    PUSH = "push"  # push mode (dicomproxy.push): C-STOREs of a queued study to a [push] destination


class JobOutcome(str, enum.Enum):
    """How a relay job ended, or where it stands (``jobs.outcome`` in the journal)."""

    RUNNING = "running"
    SUCCESS = "success"  # every sub-operation confirmed
    PARTIAL = "partial"  # some confirmed, some failed (0xB000)
    FAILED = "failed"  # none confirmed, or the PACS/destination failed
    REFUSED = "refused"  # the request was refused before any work (0xA801, 0xA900)
    EMPTY = "empty"  # nothing visible matched: zero sub-operations
    CANCELLED = "cancelled"  # C-CANCEL from the requester
    ABORTED = "aborted"  # the requester went away
    INTERRUPTED = "interrupted"  # the process ended during the job (retryable)
    RETRY_REQUESTED = "retry-requested"  # `jobs retry` or the resume asked serve to retry it
    RETRYING = "retrying"  # a serving process claimed the retry

    def __str__(self) -> str:
        return self.value


#: Outcomes a retry may start from.
RETRYABLE_OUTCOMES = (JobOutcome.INTERRUPTED, JobOutcome.ABORTED, JobOutcome.PARTIAL, JobOutcome.FAILED)


def status_label(status: int) -> str:
    """``success``, ``cancel``, or the status name in lower case (``view_unavailable``), or hex."""
    try:
        return Status(status).name.lower()
    except ValueError:
        return f"0x{status:04x}"
