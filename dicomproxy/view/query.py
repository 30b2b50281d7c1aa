"""C-FIND identifiers → SQL on the exam view, plus the residual matching done in Python.

PS3.4 C.2.2.2 matching types and where they run:

==========================  =====================================================
universal (empty, ``*``)    no predicate
single value                ``col = :p`` (PatientID, AccessionNumber, StudyID→ExamineID…)
wildcard ``*`` ``?``        ``col LIKE :p ESCAPE '\\'`` (see :mod:`dicomproxy.view.sql`)
date range (DA)             ``col >= :d1 AND col < :d2_plus_1_day`` on PerformTime, and the
                            same on RegTime where PerformTime IS NULL; never a function on
                            the column
time range (TM)             residual (Python), no crossing of midnight
list of UIDs                side table → ``ExamineID IN (...)``, ≤1000 per statement
ModalitiesInStudy ``A\\B``  ``ExamineType IN/LIKE ... OR ...`` (aliases: DX also finds DR)
PatientName                 ideographic group (or a single Chinese group) → PatientName
                            with ``^`` removed, in SQL; an alphabetic (Latin) group is
                            matched in Python against the pinyin of PatientName
==========================  =====================================================

Every non-universal key is checked again in Python against the value we would answer
(:func:`residual_match`), so a case-insensitive collation (SQL Server Chinese_PRC_CI_AS)
or a truncated value can never produce a false match.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from sqlalchemy import ColumnElement, Select, and_, or_, select

from dicomproxy.errors import InvalidIdentifier
from dicomproxy.mapping import MODALITY_ALIASES, SEX_FROM_DICOM, pinyin_name
from dicomproxy.view.sql import ESCAPE, bound, dicom_wildcard_to_like, has_wildcard, string_match
from dicomproxy.view.uids import is_valid_uid

#: (0008,0052) Query/Retrieve Level per information model (PS3.4 C.6.1 / C.6.2).
LEVELS = {"PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"), "STUDY": ("STUDY", "SERIES", "IMAGE")}

#: Keys we answer at STUDY level (PS3.4 C.6.1.1.3, Table C.6-2), besides the patient keys.
STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ModalitiesInStudy",
    "StudyDescription",
    "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "InstitutionName",
    "PatientAge",
    "AdmissionID",
    "Occupation",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "SOPClassesInStudy",
)
#: Counts only the PACS knows (asked per study when requested).
PACS_KEYS = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "SOPClassesInStudy")
#: Keys of the SERIES/IMAGE levels: an error in a PATIENT/STUDY query (PS3.4 C.4.1.2.1).
LOWER_LEVEL_KEYS = frozenset(
    {
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SeriesNumber",
        "InstanceNumber",
        "Modality",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "SOPClassUID",
        "NumberOfSeriesRelatedInstances",
    }
)
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"})

_DA_RE = re.compile(r"^\d{8}$")
_TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


@dataclass
class FindQuery:
    """A validated C-FIND identifier (PS3.4 C.4.1.1.3.1)."""

    model: str  # "PATIENT" (Patient Root) or "STUDY" (Study Root)
    level: str
    #: Keywords of every requested key, in request order (the Dataset's tag order).
    requested: list[str] = field(default_factory=list)
    #: Non-universal matching values (str; multiple values joined with ``\\``).
    values: dict[str, str] = field(default_factory=dict)

    def uids(self, keyword: str) -> list[str]:
        """The values of a UID key (list of UID matching, PS3.4 C.2.2.2.2); [] when universal."""
        value = self.values.get(keyword, "")
        return [u for u in value.split("\\") if u] if value else []

    @property
    def study_uids(self) -> list[str]:
        return self.uids("StudyInstanceUID")

    def wants(self, *keys: str) -> bool:
        return any(k in self.requested for k in keys)


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_value_text(v) for v in value)
    if isinstance(value, bytes):
        raise InvalidIdentifier("undecodable value in identifier")
    return str(value).strip()


def parse_identifier(ds: Dataset, model: str) -> FindQuery:
    """Validate a request identifier; raise :class:`InvalidIdentifier` (0xA900) naming the problem."""
    level = str(ds.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS[model]:
        raise InvalidIdentifier(f"QueryRetrieveLevel {level or '(missing)'!r} invalid for this model")
    query = FindQuery(model=model, level=level)
    for elem in ds:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if not keyword or keyword in _NOT_KEYS or elem.tag.is_private or elem.tag.element == 0:
            continue
        if level in ("PATIENT", "STUDY") and keyword in LOWER_LEVEL_KEYS:
            raise InvalidIdentifier(f"{keyword} is not a {level} level key")
        if level == "PATIENT" and keyword in STUDY_KEYS:
            raise InvalidIdentifier(f"{keyword} is not a PATIENT level key")
        query.requested.append(keyword)
        if elem.VR == "SQ":
            continue  # sequence matching is not supported: answered empty
        try:
            text = _value_text(elem.value)
        except (UnicodeError, LookupError, ValueError) as exc:
            raise InvalidIdentifier(f"cannot decode {keyword}") from exc
        if text and set(text) != {"*"}:
            if "\\" in text and elem.VR != "UI" and dictionary_VM(elem.tag) == "1":
                raise InvalidIdentifier(f"{keyword} takes one value, not a list")
            _validate(keyword, elem.VR, text)
            query.values[keyword] = text
    if level in ("SERIES", "IMAGE") and "StudyInstanceUID" not in query.values:
        raise InvalidIdentifier(f"{level} level needs a StudyInstanceUID")
    return query


def _validate(keyword: str, vr: str, text: str) -> None:
    if vr == "DA":
        date_range(keyword, text)
    elif vr == "TM":
        time_range(keyword, text)
    elif vr == "UI":
        for uid in text.split("\\"):
            if not is_valid_uid(uid):
                raise InvalidIdentifier(f"{keyword} holds an invalid UID")


def _parse_date(keyword: str, text: str) -> dt.date:
    if not _DA_RE.match(text):
        raise InvalidIdentifier(f"{keyword}: bad date {text!r}")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise InvalidIdentifier(f"{keyword}: bad date {text!r}") from None


def date_range(keyword: str, text: str) -> tuple[dt.date | None, dt.date | None]:
    """DA single value or range (PS3.4 C.2.2.2.5): ``d``, ``d1-d2``, ``-d2``, ``d1-``; inclusive."""
    if "-" not in text:
        day = _parse_date(keyword, text)
        return day, day
    lo_text, _, hi_text = text.partition("-")
    if (not lo_text and not hi_text) or "-" in hi_text:
        raise InvalidIdentifier(f"{keyword}: bad date range {text!r}")
    lo = _parse_date(keyword, lo_text) if lo_text else None
    hi = _parse_date(keyword, hi_text) if hi_text else None
    if lo and hi and lo > hi:
        raise InvalidIdentifier(f"{keyword}: date range ends before it starts")
    return lo, hi


def _tm_seconds(keyword: str, text: str, upper: bool) -> float:
    if not _TM_RE.match(text):
        raise InvalidIdentifier(f"{keyword}: bad time {text!r}")
    hh = int(text[:2])
    mm = int(text[2:4]) if len(text) >= 4 else (59 if upper else 0)
    ss = float(text[4:]) if len(text) >= 6 else (59.999999 if upper else 0.0)
    if hh > 23 or mm > 59 or ss >= 61:
        raise InvalidIdentifier(f"{keyword}: bad time {text!r}")
    return hh * 3600 + mm * 60 + ss


def time_range(keyword: str, text: str) -> tuple[float, float]:
    """TM value or range → (lo, hi) seconds of the day, inclusive; no crossing of midnight."""
    if "-" not in text:
        return _tm_seconds(keyword, text, False), _tm_seconds(keyword, text, True)
    lo_text, _, hi_text = text.partition("-")
    if not lo_text and not hi_text:
        raise InvalidIdentifier(f"{keyword}: bad time range {text!r}")
    lo = _tm_seconds(keyword, lo_text, False) if lo_text else 0.0
    hi = _tm_seconds(keyword, hi_text, True) if hi_text else 86400.0
    if lo > hi:
        raise InvalidIdentifier(f"{keyword}: time range crosses midnight")
    return lo, hi


# --- names ---------------------------------------------------------------------------------------


def split_pn_query(value: str) -> tuple[str, str]:
    """(alphabetic, ideographic) groups of a PN matching value (PS3.5 6.2.1.2).

    A single group that is not plain ASCII is taken as ideographic (local systems send
    ``王小东`` without ``=``). ``^`` is dropped from the ideographic group: the view stores
    names unsplit.
    """
    groups = value.split("=")
    if len(groups) == 1:
        alpha, ideo = (value, "") if value.isascii() else ("", value)
    else:
        alpha, ideo = groups[0], groups[1]
    ideo = ideo.replace("^", "")
    return ("" if set(alpha) <= {"*", "^"} and "*" in alpha else alpha), (
        "" if ideo in ("", "*") or set(ideo) == {"*"} else ideo
    )


def _wild_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("^" + "".join(parts) + "$", flags | re.DOTALL)


def name_matches(pattern: str, rendered: str) -> bool:
    """PN matching: ideographic against the Chinese, alphabetic case-insensitively against the
    answer's alphabetic group or the pinyin of the Chinese (``Wang^Xiaodong``, ``WANGXIAODONG``)."""
    alpha, ideo = split_pn_query(pattern)
    groups = rendered.split("=")
    r_alpha = groups[0]
    r_ideo = groups[1] if len(groups) > 1 else ("" if rendered.isascii() else rendered)
    if len(groups) == 1 and not rendered.isascii():
        r_alpha = ""
    if ideo and not _wild_regex(ideo).match(r_ideo.replace("^", "")):
        return False
    if alpha and not ideo:
        candidates = {r_alpha}
        if r_ideo:
            latin = pinyin_name(r_ideo.replace("^", ""))
            candidates |= {latin, latin.replace("^", ""), latin.replace("^", " ")}
        regex = _wild_regex(alpha.rstrip("^"), re.IGNORECASE)
        return any(c and regex.match(c) for c in candidates)
    return True


# --- residual matching ----------------------------------------------------------------------------


def _value_matches(keyword: str, vr: str, pattern: str, value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_value_matches(keyword, vr, pattern, v) for v in value)
    text = "" if value is None else str(value)
    if vr == "PN":
        return name_matches(pattern, text)
    if vr == "DA":
        if not text:
            return False
        lo, hi = date_range(keyword, pattern)
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (lo is None or day >= lo) and (hi is None or day <= hi)
    if vr == "TM":
        if not text:
            return False
        lo_s, hi_s = time_range(keyword, pattern)
        secs = _tm_seconds(keyword, text, False)
        return lo_s <= secs <= hi_s
    alternatives = pattern.split("\\") if vr in ("UI", "CS") else [pattern]
    return any(_wild_regex(alt).match(text) for alt in alternatives if alt)


def residual_match(query: FindQuery, attrs: dict[str, Any]) -> bool:
    """Every non-universal key of ``query`` against the answer we would send."""
    for keyword, pattern in query.values.items():
        if keyword not in attrs:
            continue  # a key we do not answer (returned empty): not a filter
        vr = dictionary_VR(keyword)
        if not _value_matches(keyword, vr, pattern, attrs[keyword]):
            return False
    return True


# --- SQL --------------------------------------------------------------------------------------------


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day)


def date_predicate(column: Any, lo: dt.date | None, hi: dt.date | None) -> ColumnElement[bool]:
    """``col >= :lo AND col < :hi + 1 day`` (index-friendly: no function on the column)."""
    parts = []
    if lo is not None:
        parts.append(column >= bound(column, _day_start(lo)))
    if hi is not None:
        parts.append(column < bound(column, _day_start(hi + dt.timedelta(days=1))))
    return and_(*parts)


def modality_predicate(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    """Multi-valued ModalitiesInStudy (``CT\\MR``) → OR; DX also finds the RIS's DR."""
    exact: list[str] = []
    likes: list[ColumnElement[bool]] = []
    for item in value.split("\\"):
        item = item.strip().upper()
        if not item:
            continue
        if has_wildcard(item):
            likes.append(column.like(bound(column, dicom_wildcard_to_like(item, dialect)), escape=ESCAPE))
        else:
            exact.append(item)
            exact.extend(raw for raw, norm in MODALITY_ALIASES.items() if norm == item)
    preds = likes + ([column.in_(exact)] if exact else [])
    return or_(*preds)


def sql_filters(query: FindQuery, table: Any, dialect: str) -> list[ColumnElement[bool]]:
    """The index-friendly predicates for the keys that have a view column (UIDs excepted)."""
    c = table.c
    v = query.values
    preds: list[ColumnElement[bool] | None] = []
    for key, column in (
        ("PatientID", c.PatientID),
        ("IssuerOfPatientID", c.PIDAssigningAuthority),
        ("AccessionNumber", c.AccessionNumber),
        ("StudyDescription", c.ExamineItem),
    ):
        if key in v:
            preds.append(string_match(column, v[key], dialect))
    if "StudyID" in v and not has_wildcard(v["StudyID"]):
        preds.append(c.ExamineID == bound(c.ExamineID, v["StudyID"]))
    if "PatientName" in v:
        _, ideo = split_pn_query(v["PatientName"])
        if ideo:
            preds.append(string_match(c.PatientName, ideo, dialect))
    if "PatientSex" in v and v["PatientSex"] in SEX_FROM_DICOM:
        preds.append(c.PatientSex == bound(c.PatientSex, SEX_FROM_DICOM[v["PatientSex"]]))
    if "ModalitiesInStudy" in v:
        preds.append(modality_predicate(c.ExamineType, v["ModalitiesInStudy"], dialect))
    if "StudyDate" in v:
        lo, hi = date_range("StudyDate", v["StudyDate"])
        preds.append(
            or_(
                date_predicate(c.PerformTime, lo, hi),
                and_(c.PerformTime.is_(None), date_predicate(c.RegTime, lo, hi)),
            )
        )
    return [p for p in preds if p is not None]


#: Columns read for C-FIND (never IdNumber, InfectionName, …).
FIND_COLUMNS = (
    "ExamineID",
    "PatientID",
    "PIDAssigningAuthority",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "PatientAgeUnit",
    "PatientBirthday",
    "InPatientNo",
    "Professional",
    "AccessionNumber",
    "ExamineType",
    "ExamineItem",
    "RegTime",
    "ReqDoctor",
    "PerformTime",
    "ReportPhysician",
    "Privacy",
    "HospitalID",
    "HospitalName",
    "StudyInstanceUID",
    "RowTimestamp",
    "OrderFilePath",
    "ReportFilePath",
)


def build_select(
    query: FindQuery, table: Any, visible: ColumnElement[bool], dialect: str, extra: Sequence[Any] = ()
) -> Select[Any]:
    """SELECT … WHERE visible AND filters ORDER BY PatientID, issuer, ExamineID (patient groups)."""
    c = table.c
    where = and_(visible, *sql_filters(query, table, dialect), *extra)
    return (
        select(*(c[name] for name in FIND_COLUMNS))
        .where(where)
        .order_by(c.PatientID, c.PIDAssigningAuthority, c.ExamineID)
    )
