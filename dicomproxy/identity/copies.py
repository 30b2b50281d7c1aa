"""The corrected copy of a delivered instance (IHE RAD IOCM; docs/identity.md, "Corrections").

After a rejection note withdrew the instances a destination holds with a wrong identity, each is
sent again with the view's identity *under a new SOP Instance UID* (a receiver that rejected the
old UID must not take the copy for the rejected instance): :func:`~dicomproxy.identity.corrections.
corrected_uid` of the old UID and the correction, the same on every node, so a repeat is the same
instance. What the copy replaced goes into Original Attributes Sequence (0400,0561): the PACS's
values (Reason ``COERCE``, as every coerced instance) and the old SOP Instance UID (Reason
``CORRECT``, PS3.3 C.12.1.1.9.2).

The copy is written whole by pydicom (the file meta's Media Storage SOP Instance UID changes too):
corrections are rare, and the pixel data is copied as it was read (never decoded).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomproxy.identity.coerce import apply_changes, plan_changes, record_originals
from dicomproxy.identity.corrections import corrected_uid
from dicomproxy.identity.files import Coercer
from dicomproxy.transport.rewritten import Loaded, Rewritten

#: (0400,0565) Reason for the Attribute Modification: a correction of wrong data (C.12.1.1.9.2).
CORRECT_REASON = "CORRECT"


class CorrectedCopies(Coercer):
    """A :class:`Coercer` that also gives every instance its corrected SOP Instance UID."""

    def __init__(self, base: Coercer, fingerprint: str) -> None:
        super().__init__(base.identities, base.system, base.label, base.sources)
        self.fingerprint = fingerprint

    def sent_uid(self, uid: str) -> str:
        """The copy's SOP Instance UID (what a STOW-RS response names)."""
        return corrected_uid(uid, self.fingerprint)

    def rewrite(self, src: Path | Loaded, spare: Path) -> Path | Loaded | Rewritten:
        """``spare``: the copy of ``src`` with the view's identity and its new SOP Instance UID."""
        ds = dcmread(src.path if isinstance(src, Loaded) else src)
        when = dt.datetime.now().astimezone()
        identity = self.identities.get(str(ds.get("StudyInstanceUID", "")))
        if identity is not None:
            source = self.sources.get(identity.study_uid, "")
            apply_changes(ds, plan_changes(ds, identity), system=self.system, source=source, when=when)
        else:
            self._warn(str(ds.get("StudyInstanceUID", "")))
        copy_of(ds, self.fingerprint, system=self.system, when=when)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(spare, enforce_file_format=True)
        with self._lock:
            self.coerced += 1
        return spare


def copy_of(ds: Dataset, fingerprint: str, *, system: str, when: dt.datetime | None = None) -> str:
    """Give ``ds`` its corrected SOP Instance UID, the old one kept in Original Attributes
    Sequence with Reason ``CORRECT``; the new UID."""
    originals = Dataset()
    originals.SOPInstanceUID = ds.SOPInstanceUID
    record_originals(ds, originals, system=system, source="", when=when, reason=CORRECT_REASON)
    ds.SOPInstanceUID = corrected_uid(str(ds.SOPInstanceUID), fingerprint)
    return str(ds.SOPInstanceUID)
