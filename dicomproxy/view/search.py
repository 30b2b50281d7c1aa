"""Answer a PATIENT or STUDY level C-FIND from the view, streaming (PS3.4 C.4.1.3).

Rows come ordered by (PatientID, issuer, ExamineID) and are processed one patient at a
time: only that patient's rows are held in memory. Within a patient, rows are merged by
Study Instance UID (several exam rows may describe one study); a UID that appears under
two patients is answered once (the first) and logged. At PATIENT level one answer per
(PatientID, issuer); rows without a PatientID have no patient to answer for and are
skipped there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from itertools import groupby
from typing import Any

from dicomproxy.config import NameStyle
from dicomproxy.mapping import FILES_KEY, file_locations, patient_attributes, study_attributes
from dicomproxy.view.query import FindQuery, build_select, residual_match, split_pn_query
from dicomproxy.view.repository import ExamView
from dicomproxy.view.sql import batches
from dicomproxy.view.stamp import StampKind, kind_of
from dicomproxy.view.uids import split_uid_cell

LOG = logging.getLogger("dicomproxy.view.search")

Attrs = dict[str, Any]


def _patient_key(row: dict[str, Any]) -> tuple[str, str]:
    return (row.get("PatientID") or "", row.get("PIDAssigningAuthority") or "")


def _alphabetic_name(query: FindQuery) -> str | None:
    """The PatientName alphabetic group when it is the only name criterion (else None)."""
    value = query.values.get("PatientName")
    if not value:
        return None
    alpha, ideo = split_pn_query(value)
    if ideo or not alpha or set(alpha) <= {"*", "?", "^"}:
        return None
    return alpha


#: Keys whose exact value finds a handful of rows (a patient's exams, one accession).
NARROW_KEYS = ("PatientID", "AccessionNumber")


def _exact(value: str) -> bool:
    """A single value or list of single values, no wildcard (PS3.4 C.2.2.2.1, C.2.2.2.4)."""
    return bool(value) and "*" not in value and "?" not in value


def _loose_key(row: dict[str, Any]) -> tuple[str, str]:
    pid, issuer = _patient_key(row)
    return pid.casefold().rstrip(), issuer.casefold().rstrip()


def search(
    view: ExamView,
    query: FindQuery,
    *,
    style: NameStyle,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Attrs]:
    """Every matching answer as a full attribute dict (the caller keeps the requested keys)."""
    wanted_uids = query.study_uids
    alphabetic = _alphabetic_name(query)
    patients = view.patients_for_pinyin(alphabetic) if alphabetic and not wanted_uids else None
    if wanted_uids:
        preds = view.uid_predicates(wanted_uids)
        if not preds:
            return
        statements = [build_select(query, view.table, view.visible(), view.dialect, [p]) for p in preds]
    elif patients is not None:
        # Latin name query: pinyin side table → PatientID IN (...), ≤1000 per statement;
        # sorted ids keep each patient inside one statement.
        pid = view.table.c.PatientID
        statements = [
            build_select(query, view.table, view.visible(), view.dialect, [pid.in_(chunk)])
            for chunk in batches(patients)
        ]
    else:
        statements = [build_select(query, view.table, view.visible(), view.dialect)]
    only = set(wanted_uids)
    emitted: set[str] = set()
    narrow = bool(wanted_uids) or any(_exact(query.values.get(k, "")) for k in NARROW_KEYS)
    for stmt in statements:
        rows = (r for r in view.stream(stmt, narrow=narrow) if view.is_visible(r))
        # Case-insensitive collations (MariaDB *_ci, SQL Server CI) may interleave P1/p1:
        # group loosely by the sort order, then exactly by the key.
        for _key, loose in groupby(rows, key=_loose_key):
            if cancelled():
                return
            exact: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for row in loose:
                exact.setdefault(_patient_key(row), []).append(row)
            for patient_rows in exact.values():
                if query.level == "PATIENT":
                    yield from _patient_answer(query, patient_rows, style)
                else:
                    yield from _study_answers(query, patient_rows, style, only, emitted)


def _stamp_order(value: Any) -> tuple[int, Any]:
    """Sort key for RowTimestamp: values of one kind compare; a view mixing kinds (a data
    error check-view reports) orders by kind instead of failing."""
    kind = kind_of(value)
    return (_KIND_RANK[kind], value if kind is not StampKind.EMPTY else 0)


_KIND_RANK = {kind: rank for rank, kind in enumerate(StampKind)}


def _patient_answer(query: FindQuery, rows: list[dict[str, Any]], style: NameStyle) -> Iterator[Attrs]:
    if not rows[0].get("PatientID"):
        return
    # Latest row first: a renamed patient is answered with the current name.
    rows.sort(key=lambda r: _stamp_order(r.get("RowTimestamp")), reverse=True)
    attrs = patient_attributes(rows, style)
    uids = {u for r in rows for u in split_uid_cell(r.get("StudyInstanceUID"))}
    attrs["NumberOfPatientRelatedStudies"] = str(len(uids))  # (0020,1200) IS
    if residual_match(query, attrs):
        yield attrs


def _study_answers(
    query: FindQuery,
    rows: list[dict[str, Any]],
    style: NameStyle,
    only: set[str],
    emitted: set[str],
) -> Iterator[Attrs]:
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for uid in split_uid_cell(row.get("StudyInstanceUID")):
            if not only or uid in only:
                by_uid.setdefault(uid, []).append(row)
    for uid, uid_rows in by_uid.items():
        if uid in emitted:
            LOG.warning(
                "StudyInstanceUID on rows of two patients; answered once (ExamineID %s)",
                uid_rows[0].get("ExamineID"),
            )
            continue
        attrs = study_attributes(uid, uid_rows, style)
        if residual_match(query, attrs):
            emitted.add(uid)
            attrs[FILES_KEY] = file_locations(uid_rows)  # [reports] in_retrieve counts them
            yield attrs
