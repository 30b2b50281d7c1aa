"""Exam-view rows → DICOM attribute values (exam-view.md, PS3.4 C.6.1.1 / C.6.2.1).

Pure functions; values are Python strings (or lists for multi-valued attributes) ready
to put into a pydicom Dataset. Unparsable source values become empty (zero-length)
attributes, never an error: a bad row must not break a whole C-FIND.

Below both users: the exam view's C-FIND answers (:mod:`dicomproxy.view`) and the order/report
objects, which carry their study's patient and study attributes (:mod:`dicomproxy.reports`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from pypinyin import Style, lazy_pinyin

from dicomproxy.config import NameStyle

Row = Mapping[str, Any]

#: (0010,0040) Patient's Sex, VR CS: M / F / O.
SEX_TO_DICOM = {"男": "M", "女": "F", "未知": "O"}
SEX_FROM_DICOM = {v: k for k, v in SEX_TO_DICOM.items()}
#: (0010,1010) Patient's Age, VR AS: nnnD / nnnW / nnnM / nnnY (PS3.5 6.2).
AGE_UNITS = {"岁": "Y", "月": "M", "周": "W", "天": "D"}
#: Modalities the RIS writes that DICOM spells differently (PS3.3 C.7.3.1.1.1).
MODALITY_ALIASES = {"DR": "DX"}

_BIRTH_RE = re.compile(r"^(\d{4})[-/.]?(\d{1,2})[-/.]?(\d{1,2})$")


def sex(value: str | None) -> str:
    """男/女/未知 → M/F/O; anything else (and NULL) → empty."""
    return SEX_TO_DICOM.get((value or "").strip(), "")


def age(value: str | None, unit: str | None) -> str:
    """PatientAge + PatientAgeUnit → AS ``045Y``; unparsable or > 999 → empty."""
    code = AGE_UNITS.get((unit or "").strip())
    text = (value or "").strip()
    if code is None or not text.isdigit():
        return ""
    number = int(text)
    return f"{number:03d}{code}" if 0 <= number <= 999 else ""


def birth_date(value: str | None) -> str:
    """PatientBirthday text (``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYYMMDD``) → DA; invalid → empty."""
    match = _BIRTH_RE.match((value or "").strip())
    if not match:
        return ""
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3])).strftime("%Y%m%d")
    except ValueError:
        return ""


def study_datetime(row: Row) -> dt.datetime | None:
    """PerformTime, falling back to RegTime (local time, as the RIS stores it)."""
    value = row.get("PerformTime") or row.get("RegTime")
    return value if isinstance(value, dt.datetime) else None


def modality(value: str | None) -> str:
    text = (value or "").strip().upper()
    return MODALITY_ALIASES.get(text, text)


@lru_cache(maxsize=4096)
def pinyin_name(chinese: str) -> str:
    """``王小东`` → ``Wang^Xiaodong`` (first character = family name; pypinyin, no tones).

    Compound surnames (欧阳, 司马…) are split after the first character: a known
    limitation, see docs/view.md. Non-Chinese text is returned unchanged.
    """
    text = chinese.replace("^", "").strip()
    if not text or text.isascii():
        return chinese.strip()
    syllables = [s for s in lazy_pinyin(text, style=Style.NORMAL, errors="ignore") if s]
    if not syllables:
        return ""
    family = syllables[0].capitalize()
    given = "".join(syllables[1:]).capitalize()
    return f"{family}^{given}" if given else family


def person_name(chinese: str | None, style: NameStyle) -> str:
    """PN as the peer wants it (PS3.5 6.2.1.2 component groups).

    ``ideographic`` → ``=王小东``; ``single`` → ``王小东``; ``pinyin`` → ``Wang^Xiaodong=王小东``.
    ASCII names (e.g. foreigners) are always a plain alphabetic group.
    """
    text = (chinese or "").strip()
    if not text or text.isascii():
        return text
    if style == "single":
        return text
    if style == "pinyin":
        latin = pinyin_name(text)
        return f"{latin}={text}" if latin else f"={text}"
    return f"={text}"


#: View column → the role of the file it names (order and report objects, :mod:`dicomproxy.reports`).
FILE_COLUMNS = {"OrderFilePath": "order", "ReportFilePath": "report"}
#: Key of a STUDY-level answer's :func:`file_locations` (not a DICOM keyword: never sent).
FILES_KEY = "_files"


def file_locations(rows: Sequence[Row]) -> dict[str, str]:
    """Role → where the view says the file is (the first non-blank value among merged rows,
    as for every other single-valued attribute); roles without a file are left out."""
    found: dict[str, str] = {}
    for column, role in FILE_COLUMNS.items():
        for row in rows:
            value = str(row.get(column) or "").strip()
            if value:
                found[role] = value
                break
    return found


def first(rows: Sequence[Row], key: str) -> Any:
    """The first non-empty value of ``key`` among merged rows."""
    for row in rows:
        value = row.get(key)
        if value not in (None, ""):
            return value
    return None


def study_attributes(uid: str, rows: Sequence[Row], style: NameStyle) -> dict[str, Any]:
    """Every attribute we can answer for one study (one UID, one or more merged rows).

    Single-valued attributes come from the first row that has them (rows ordered by
    ExamineID); ModalitiesInStudy is the union over the rows.
    """
    when = next((w for w in (study_datetime(r) for r in rows) if w is not None), None)
    examine_id = str(first(rows, "ExamineID") or "")
    modalities = sorted({m for m in (modality(r.get("ExamineType")) for r in rows) if m})
    values: dict[str, Any] = patient_attributes(rows, style)
    values.update(
        {
            "StudyInstanceUID": uid,  # (0020,000D) UI, unique key at STUDY level
            "StudyDate": when.strftime("%Y%m%d") if when else "",  # (0008,0020) DA
            "StudyTime": when.strftime("%H%M%S") if when else "",  # (0008,0030) TM
            "AccessionNumber": str(first(rows, "AccessionNumber") or "")[:16],  # (0008,0050) SH
            "StudyID": examine_id if len(examine_id) <= 16 else "",  # (0020,0010) SH
            "ModalitiesInStudy": modalities,  # (0008,0061) CS, VM 1-n
            "StudyDescription": str(first(rows, "ExamineItem") or "")[:64],  # (0008,1030) LO
            "ReferringPhysicianName": person_name(first(rows, "ReqDoctor"), style),  # (0008,0090) PN
            "NameOfPhysiciansReadingStudy": person_name(first(rows, "ReportPhysician"), style),  # (0008,1060)
            "InstitutionName": str(first(rows, "HospitalName") or "")[:64],  # (0008,0080) LO
            "PatientAge": age(first(rows, "PatientAge"), first(rows, "PatientAgeUnit")),  # (0010,1010) AS
            "AdmissionID": str(first(rows, "InPatientNo") or ""),  # (0038,0010) LO
            "Occupation": str(first(rows, "Professional") or "")[:16],  # (0010,2180) SH
        }
    )
    return values


def patient_attributes(rows: Sequence[Row], style: NameStyle) -> dict[str, Any]:
    """Patient-level attributes (PS3.4 C.6.1.1.2) from the rows of one patient."""
    return {
        "PatientName": person_name(first(rows, "PatientName"), style),  # (0010,0010) PN
        "PatientID": str(first(rows, "PatientID") or ""),  # (0010,0020) LO, unique key at PATIENT level
        "IssuerOfPatientID": str(first(rows, "PIDAssigningAuthority") or ""),  # (0010,0021) LO
        "PatientBirthDate": birth_date(first(rows, "PatientBirthday")),  # (0010,0030) DA
        "PatientSex": sex(first(rows, "PatientSex")),  # (0010,0040) CS
    }
