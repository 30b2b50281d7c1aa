"""A study's order and report files: which the view names, their DICOM objects, and what C-FIND
answers for them at the SERIES and IMAGE levels (``[reports] in_retrieve``).

Each file is one object in a series of its own (:func:`~dicomproxy.reports.encode.series_uid`),
so the series can be named before the file is read; the object's SOP Instance UID depends on the
file's bytes and is known only once it was fetched (IMAGE level).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomproxy.config import NameStyle, ReportsConfig
from dicomproxy.mapping import file_locations
from dicomproxy.reports.encode import (
    ENCAPSULATED_PDF,
    SECONDARY_CAPTURE,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    ReportObject,
    build,
    series_uid,
)
from dicomproxy.reports.fetch import fetch

#: SOP classes a file may become (the presentation contexts an onward association proposes).
SOP_CLASSES = (str(ENCAPSULATED_PDF), str(SECONDARY_CAPTURE))

_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def likely_jpeg(location: str) -> bool:
    """What a file's name suggests (C-FIND answers before the file is read; the bytes decide later)."""
    return location.lower().rstrip().endswith(_JPEG_SUFFIXES)


def likely_modality(location: str) -> str:
    """(0008,0060) of the object the file will likely become: OT (Secondary Capture) or DOC (PDF)."""
    return "OT" if likely_jpeg(location) else "DOC"


def likely_sop_class(location: str) -> str:
    """(0008,0016) of the object the file will likely become."""
    return str(SECONDARY_CAPTURE) if likely_jpeg(location) else str(ENCAPSULATED_PDF)


@dataclass(frozen=True)
class StudyFile:
    """One file the view names for a study (its role: ``order`` or ``report``)."""

    study_uid: str
    role: str
    location: str
    #: The study's visible view rows (patient and study attributes of the object).
    rows: Sequence[Mapping[str, Any]] = field(compare=False, repr=False)

    @property
    def series_uid(self) -> str:
        return series_uid(self.study_uid, self.role)

    def make(self, config: ReportsConfig, style: NameStyle) -> ReportObject:
        """Fetch and encode (raises ReportUnavailable with the reason)."""
        return build(self.study_uid, self.role, fetch(self.location, config), self.rows, style)


def study_files(study_uid: str, rows: Sequence[Mapping[str, Any]]) -> list[StudyFile]:
    """The files the view names for one study (order first, then report)."""
    return [StudyFile(study_uid, role, where, rows) for role, where in file_locations(rows).items()]


def series_attributes(file: StudyFile) -> dict[str, Any]:
    """A SERIES-level C-FIND answer for ``file``'s series (PS3.4 C.6.2.1.3)."""
    return {
        "StudyInstanceUID": file.study_uid,
        "SeriesInstanceUID": file.series_uid,
        "Modality": likely_modality(file.location),
        "SeriesNumber": str(SERIES_NUMBERS[file.role]),
        "SeriesDescription": SERIES_DESCRIPTIONS[file.role],
        "NumberOfSeriesRelatedInstances": "1",
    }


def image_attributes(obj: ReportObject) -> dict[str, Any]:
    """An IMAGE-level C-FIND answer for one object (PS3.4 C.6.2.1.4)."""
    ds = obj.dataset
    return {
        "StudyInstanceUID": str(ds.StudyInstanceUID),
        "SeriesInstanceUID": str(ds.SeriesInstanceUID),
        "SOPInstanceUID": obj.sop_instance_uid,
        "SOPClassUID": obj.sop_class_uid,
        "InstanceNumber": str(ds.InstanceNumber),
        "Modality": str(ds.Modality),
        "SeriesNumber": str(ds.SeriesNumber),
    }


def _matches(pattern: Any, value: str) -> bool:
    """PS3.4 C.2.2.2: list of UIDs, wildcard (``*`` ``?``) or single value; empty is universal."""
    if isinstance(pattern, (list, tuple, MultiValue)):
        return any(_matches(p, value) for p in pattern) if pattern else True
    text = str(pattern or "").strip()
    if not text or text == "*":
        return True
    if "*" in text or "?" in text:
        return fnmatch.fnmatchcase(value, text)
    return value == text


def answer(identifier: Dataset, attrs: Mapping[str, Any], charset: str) -> Dataset | None:
    """The requested keys of ``identifier`` filled from ``attrs``, or None if a key with a
    value does not match. A key we do not answer is returned empty and is not a filter (as for
    the view's own keys)."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        ours = str(attrs.get(keyword, ""))
        if keyword in attrs and not _matches(elem.value, ours):
            return None
        if elem.VR == "SQ":
            setattr(ds, keyword, [])
        else:
            setattr(ds, keyword, ours)
    ds.QueryRetrieveLevel = identifier.get("QueryRetrieveLevel", "")
    return ds
