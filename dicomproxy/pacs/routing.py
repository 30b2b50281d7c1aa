"""Which upstream archive serves an exam: routed by the view's ``Sysid`` (and optionally ``ExamineType``).

Rules (docs/archives.md): ``[[archives]]`` entries are tried in file order; an entry matches when the
exam's Sysid is in its ``sysids`` and, if it lists ``modalities``, the exam's ExamineType is one of them.
Then ``[pacs]``: with no ``sysids`` it serves every exam no other archive claimed (so a config with only
``[pacs]`` keeps working); with ``sysids`` it is matched like the others. An exam nothing matches is
unroutable: it is reported by ``check-view`` and answered with :class:`Unroutable`, never sent to a
guessed archive.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomproxy.config import Config, PacsConfig
from dicomproxy.errors import UnableToProcess
from dicomproxy.status import Status


class Unroutable(UnableToProcess):
    """No archive is configured for the exam's Sysid/ExamineType (0xC004, "unable to process")."""

    status = Status.UNROUTABLE


@dataclass(frozen=True)
class StudyRef:
    """One visible study and the view fields that route it (``ExamView.resolve_studies``)."""

    uid: str
    #: The row's ``Sysid`` (RIS, UIS, EIS, ECG, PIS ...), upper case; "" when unknown.
    sysid: str = ""
    #: The row's ``ExamineType`` (modality), upper case; "" when unknown.
    modality: str = ""


def _matches(archive: PacsConfig, sysid: str, modality: str) -> bool:
    return sysid in archive.sysids and (not archive.modalities or modality in archive.modalities)


def route(config: Config, sysid: str | None, modality: str | None = None) -> PacsConfig:
    """The one archive that serves an exam with this Sysid and ExamineType."""
    key = (sysid or "").strip().upper()
    mod = (modality or "").strip().upper()
    for archive in config.archives:
        if _matches(archive, key, mod):
            return archive
    if not config.pacs.sysids or _matches(config.pacs, key, mod):
        return config.pacs
    raise Unroutable(
        f"no archive configured for Sysid {key or '(empty)'!r}, ExamineType {mod or '(empty)'!r}"
    )
