"""``dicomproxy find``: a C-FIND SCU for administrators (PS3.4 C.4.1), printing a table.

Keys are ``Keyword=value`` or ``gggg,eeee=value``; an empty value asks for the attribute.
Values are sent in ``--charset`` (default ISO_IR 192); answers are decoded with the charset
they declare.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicomproxy.status import is_pending
from dicomproxy.transport.net import NoAssociation, Remote, open_association

MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelFind,
    "study": StudyRootQueryRetrieveInformationModelFind,
}

#: Keys asked when the user gives none, per level.
DEFAULT_KEYS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex"],
    "STUDY": [
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyInstanceUID",
    ],
    "SERIES": ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber"],
    "IMAGE": ["SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber"],
}


@dataclass
class FindOutcome:
    status: int
    comment: str
    answers: list[Dataset]


def parse_key(spec: str) -> tuple[str, str]:
    """``PatientName=王*`` / ``0010,0010=王*`` → (keyword, value); ValueError names the bad key."""
    name, _, value = spec.partition("=")
    name = name.strip()
    if "," in name or (len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name)):
        try:
            tag = Tag(name.replace(",", ""))
        except (ValueError, OverflowError):
            raise ValueError(f"invalid tag {name!r}") from None
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise ValueError(f"unknown tag {name!r}")
        return keyword, value
    if tag_for_keyword(name) is None:
        raise ValueError(f"unknown DICOM keyword {name!r}")
    return name, value


def build_query(level: str, keys: Sequence[tuple[str, str]], charset: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys or [(k, "") for k in DEFAULT_KEYS[level]]:
        setattr(ds, keyword, [] if dictionary_VR(keyword) == "SQ" else value)
    return ds


def run_find(
    calling: str, remote: Remote, model: str, query: Dataset, *, timeout: float = 30.0
) -> FindOutcome:
    """One C-FIND; never raises for network problems (status -1 then)."""
    try:
        assoc = open_association(
            calling,
            remote,
            add_contexts=lambda ae: ae.add_requested_context(MODELS[model]),
            acse_timeout=timeout,
            dimse_timeout=timeout,
            connect_timeout=timeout,
        )
    except NoAssociation:
        return FindOutcome(-1, f"no association with {remote}", [])
    try:
        answers: list[Dataset] = []
        for status, ds in assoc.send_c_find(query, MODELS[model]):
            if status is None or "Status" not in status:
                return FindOutcome(-1, "no response (timeout or abort)", answers)
            if is_pending(int(status.Status)):
                if ds is not None:
                    answers.append(ds)
            else:
                return FindOutcome(int(status.Status), str(status.get("ErrorComment", "") or ""), answers)
        return FindOutcome(-1, "no final status", answers)
    finally:
        if assoc.is_established:
            assoc.release()
        assoc.ae.shutdown()


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def format_table(answers: Sequence[Dataset], columns: Sequence[str]) -> Iterator[str]:
    """Aligned text table; East Asian wide characters count as two columns."""
    rows = [[_cell(ds.get(col)) for col in columns] for ds in answers]
    widths = [max([_width(col)] + [_width(r[i]) for r in rows]) for i, col in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True)).rstrip()

    yield line(list(columns))
    yield line(["-" * w for w in widths])
    for r in rows:
        yield line(r)
