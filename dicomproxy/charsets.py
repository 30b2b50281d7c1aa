"""Specific Character Set (0008,0005) handling for Chinese text (PS3.3 C.12.1.1.2, PS3.5 6.1).

The one place where pydicom's character-set behaviour is adjusted:
:func:`install_pydicom_workarounds` is called once at start-up (``build_context`` and the
``find`` CLI). pydicom 3.0.2 lists ``iso_ir_58`` among the encodings whose escape
sequences Python's codec handles itself, but Python's ``iso_ir_58`` (GB2312) codec
emits none, so ``\\ISO 2022 IR 58`` values are written without ``ESC $ ) A`` and read
with the escapes left in the text. Removing it from ``pydicom.charset.handled_encodings``
makes pydicom add/strip the escape sequences per PS3.5 Annex K (see dicom-notes.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydicom.charset
import pydicom.config

#: Single-byte-free stand-alone sets we answer in when the request uses them.
ANSWER_CHARSETS: tuple[str, ...] = ("ISO_IR 192", "GB18030", "GBK")

_FIXED_HANDLED_ENCODINGS = ("iso2022_jp", "iso2022_jp_2")


def install_pydicom_workarounds() -> None:
    """Fix pydicom 3.0.2's ISO 2022 IR 58 handling (idempotent; process-wide).

    Also: values that break their VR's rules (a ``2024-01-02`` date from a peer) are
    judged by our own validation (0xA900 with a reason), not by pydicom warnings.
    """
    pydicom.charset.handled_encodings = _FIXED_HANDLED_ENCODINGS  # type: ignore[assignment]
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def declared_charsets(value: Any) -> list[str]:
    """(0008,0005) as a list of defined terms; empty value 1 stands for ISO_IR 6."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value.strip()]
    return [str(v).strip() for v in value]


def answer_charset(requested: Sequence[str], default: str) -> str:
    """PS3.4 C.2.2.2: answer in the request's set when it is UTF-8, GB18030 or GBK, else ``default``."""
    if len(requested) == 1 and requested[0] in ANSWER_CHARSETS:
        return requested[0]
    return default


def check_supported(requested: Sequence[str]) -> str | None:
    """A reason if pydicom cannot decode this (0008,0005), else None."""
    for term in requested:
        if term and term not in pydicom.charset.python_encoding:
            return f"unsupported Specific Character Set {term!r}"
    return None
