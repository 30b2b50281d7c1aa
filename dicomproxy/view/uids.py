"""Study Instance UID cells of the exam view: split, validate, de-duplicate.

A cell may hold several UIDs separated by ``,`` (the seed), ``;`` or whitespace
(tolerated). A UID is valid when it satisfies PS3.5 9.1: at most 64 characters, digits
and dots only, no empty component, no leading zero in a multi-digit component.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SPLIT_RE = re.compile(r"[,;\s]+")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: PS3.5 9.1: a UID is at most 64 characters.
MAX_UID_LENGTH = 64


def is_valid_uid(value: str) -> bool:
    """True for a well-formed UID (PS3.5 9.1)."""
    return 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.match(value) is not None


def split_uid_cell(cell: str | None) -> list[str]:
    """Every valid UID in a StudyInstanceUID cell, in order, without duplicates."""
    if not cell:
        return []
    return dedupe(part for part in _SPLIT_RE.split(cell.strip()) if is_valid_uid(part))


def invalid_uid_parts(cell: str | None) -> list[str]:
    """The non-empty parts of a cell that are not valid UIDs (for ``check-view``)."""
    if not cell:
        return []
    return [part for part in _SPLIT_RE.split(cell.strip()) if part and not is_valid_uid(part)]


def dedupe(values: Iterable[str]) -> list[str]:
    """Drop repeats, keep the first occurrence's order."""
    return list(dict.fromkeys(values))
