"""The report as text: a table for people, JSON and CSV for programs (``dicomproxy reconcile``).

What it shows per study and destination: the Study Instance UID (0020,000D), the Accession Number
(0008,0050), the destination, the archive, the category, counts, and the SOP Instance UIDs
(0008,0018) missing or extra — operators need them to find the study. Never a patient's name or ID
(docs/operations.md, "What the report shows").
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Sequence
from typing import Any

from dicomproxy.reconcile.run import Outcome, StudyReport

CSV_COLUMNS = [
    "study_uid",
    "accession",
    "destination",
    "archive",
    "category",
    "basis",
    "pacs",
    "present",
    "missing",
    "lost",
    "extra",
    "uncommitted",
    "queued",
    "missing_uids",
    "extra_uids",
    "uncommitted_uids",
    "error",
]


def report_dict(r: StudyReport) -> dict[str, Any]:
    """One row as JSON: counts, and the missing and extra UIDs sorted."""
    return {
        "study_uid": r.study_uid,
        "accession": r.accession,
        "destination": r.destination,
        "archive": r.archive,
        "category": r.category.value,
        "basis": r.basis,
        "counts": dict(r.counts),
        "missing": list(r.missing),
        "extra": list(r.extra),
        "uncommitted": list(r.uncommitted),
        "queued": r.queued,
        "error": r.error,
    }


def as_json(outcome: Outcome) -> str:
    return json.dumps(
        {
            "destinations": [s.as_dict() for s in outcome.summaries],
            "unasked": outcome.unasked,
            "load": {who: {"cfinds": n, "associations": a} for who, (n, a) in outcome.load.items()},
            "studies": [report_dict(r) for r in outcome.reports],
        },
        ensure_ascii=False,
        indent=2,
    )


def as_csv(outcome: Outcome) -> str:
    """One line per study and destination; UID lists space-separated."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in outcome.reports:
        d = report_dict(r)
        c = d["counts"]
        writer.writerow(
            [
                r.study_uid,
                r.accession,
                r.destination,
                r.archive,
                d["category"],
                d["basis"],
                c["pacs"],
                c["present"],
                c["missing"],
                c["lost"],
                c["extra"],
                c["uncommitted"],
                r.queued,
                " ".join(d["missing"]),
                " ".join(d["extra"]),
                " ".join(d["uncommitted"]),
                r.error,
            ]
        )
    return out.getvalue()


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(_width(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c) + " " * (w - _width(str(c))) for c, w in zip(cells, widths, strict=True)
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def as_table(outcome: Outcome) -> str:
    """The rows, each missing or extra UID on a line of its own below its study, then a line of
    counts per destination."""
    header = ["STUDY INSTANCE UID", "ACCESSION", "DEST", "CATEGORY", "PACS", "AT DEST", "MISSING", "EXTRA"]
    lines: list[str] = []
    rows: list[list[str]] = []
    details: list[list[str]] = []
    for r in outcome.reports:
        at_dest = str(r.counts["present"]) + ("" if r.basis == "destination" else "*")
        rows.append(
            [
                r.study_uid,
                r.accession,
                r.destination,
                r.category.value,
                str(r.counts["pacs"]) if r.category.value != "unknown" else "?",
                at_dest,
                str(r.counts["missing"]),
                str(r.counts["extra"]),
            ]
        )
        more = [f"    missing {u}" + (" (lost at the destination)" if u in r.lost else "") for u in r.missing]
        more += [f"    extra   {u}" for u in r.extra]
        more += [f"    not committed {u}" for u in r.uncommitted]
        if r.error:
            more.append(f"    ({r.error})")
        if r.queued:
            more.append(f"    queued for delivery: {r.queued}")
        details.append(more)
    table = _table(header, rows)
    lines.extend(table[:2])
    for row_line, more in zip(table[2:], details, strict=True):
        lines.append(row_line)
        lines.extend(more)
    if any(r.basis != "destination" for r in outcome.reports):
        lines.append("* from our journal: the destination could not be asked (no C-FIND answer)")
    for dest, why in outcome.unasked.items():
        lines.append(f"{dest}: not asked ({why})")
    lines.append("")
    for who, (n, a) in outcome.load.items():
        lines.append(f"{who}: {n} C-FIND(s) on {a} association(s) requested")
    for s in outcome.summaries:
        lines.append(
            f"{s.destination}: {s.studies} studies, {s.complete} complete, {s.missing_studies} missing "
            f"({s.missing_instances} instances), {s.extra_studies} extra, {s.not_in_pacs} not in the PACS, "
            f"{s.uncommitted} not committed, {s.unknown} unknown"
            + (f"; {s.queued} instances queued for delivery" if s.queued else "")
        )
    return "\n".join(lines)
