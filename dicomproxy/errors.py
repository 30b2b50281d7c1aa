"""Exceptions that carry their DICOM meaning.

Every error a DIMSE service handler can meet is one of these. A handler catches
:class:`DicomServiceError`, logs ``str(exc)`` once and answers ``exc.status`` (with
``exc.comment`` as Error Comment (0000,0902) where the service allows one). Nothing here
exits the process: only the CLI does that.

Status values are from PS3.4 Annex C (Q/R) and PS3.7 Annex C; the 0xC0xx values in the
"Unable to process" range are ours and documented in docs/statuses.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicomproxy.status import Status


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid.

    The message always names the file and, where one is at fault, the key.
    """

    def __init__(self, path: Path | str | None, key: str | None, problem: str) -> None:
        self.path = str(path) if path is not None else "<config>"
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class DicomServiceError(Exception):
    """Base class: an error that becomes a DIMSE status for the peer."""

    #: DIMSE status the peer gets (PS3.7 C).
    status: int = Status.UNABLE_TO_PROCESS

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def comment(self) -> str:
        """Error Comment (0000,0902): VR LO, at most 64 characters, no patient data."""
        return str(self)[:64]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its status (raised in a transcoding pool worker, re-raised in the relay)."""
        return (_rebuild, (type(self), str(self), self.status))


def _rebuild(cls: type[DicomServiceError], message: str, status: int) -> DicomServiceError:
    return cls(message, status=status)


class InvalidIdentifier(DicomServiceError):
    """The request identifier is malformed (PS3.4 C.4.1.1.4: 0xA900 Identifier does not match SOP Class)."""

    status = Status.IDENTIFIER_MISMATCH


class UnableToProcess(DicomServiceError):
    """Generic failure, PS3.4 C.4.1.1.4 / C.4.2.1.5 0xC000-0xCFFF "Unable to process"."""

    status = Status.UNABLE_TO_PROCESS


class ViewUnavailable(UnableToProcess):
    """The exam view's database cannot be reached or failed the query."""

    status = Status.VIEW_UNAVAILABLE


class PacsUnavailable(UnableToProcess):
    """The PACS cannot be reached, refused the association, or failed the request."""

    status = Status.PACS_UNAVAILABLE


class DestinationUnavailable(UnableToProcess):
    """The C-MOVE destination cannot be reached or refused the association."""

    status = Status.DESTINATION_UNAVAILABLE


class MoveDestinationUnknown(DicomServiceError):
    """PS3.4 C.4.2.1.5: 0xA801 Refused: Move Destination unknown."""

    status = Status.MOVE_DESTINATION_UNKNOWN


class TooManySubOperations(DicomServiceError):
    """PS3.4 C.4.2.1.5: 0xA702 is for sub-operation failures; >65535 sub-ops is 0xC516 in pynetdicom."""

    status = Status.TOO_MANY_SUBOPS


class NotAuthorized(DicomServiceError):
    """PS3.7 C.5.x general status 0x0124 "Refused: Not authorized" (peer lacks the service permission)."""

    status = Status.NOT_AUTHORIZED


class CannotTranscode(UnableToProcess):
    """No transfer syntax the destination accepted can carry this instance.

    The instance's C-STORE sub-operation cannot be attempted, so it counts as a failed sub-operation
    (PS3.4 C.4.2.3.1: the final C-MOVE/C-GET status becomes 0xB000 or 0xA702). When a status for this
    one instance is needed it is 0xC010, in the 0xCxxx "Unable to process" range that PS3.4 Table C.4-2
    (C-MOVE) and B.2-1 (C-STORE "Cannot understand") leave to the implementation. It is *not* 0xA9xx
    ("Data Set does not match SOP Class"): the data set is fine, the negotiated syntaxes are not.
    """

    status = Status.CANNOT_TRANSCODE
