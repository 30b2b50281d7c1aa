"""``check-view``: what is wrong with this hospital's exam view, rule by rule.

One pass over the view (streamed). Every rule reports how many rows break it and a few
ExamineIDs to look up — never patient data. Integrators run it on day one; the text
output is meant to be pasted into a ticket for the RIS vendor, ``--json`` is for machines.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import String, cast, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomproxy.config import Config
from dicomproxy.errors import ViewUnavailable
from dicomproxy.mapping import birth_date
from dicomproxy.pacs.routing import Unroutable, route
from dicomproxy.view.model import COLUMN_NAMES, REQUIRED_COLUMNS, exam_view_table, missing_view_columns
from dicomproxy.view.repository import first_line, make_engine, row_visible
from dicomproxy.view.stamp import StampKind, kind_of, policy_for
from dicomproxy.view.uids import invalid_uid_parts, split_uid_cell

#: Enumerations from the seed (exam-view.md). NULL/empty is "not given", not a violation.
ENUMS: dict[str, tuple[str, ...]] = {
    "PatientSex": ("男", "女", "未知"),
    "PatientAgeUnit": ("岁", "月", "周", "天"),
    "State": ("登记完成", "检查完成", "书写完成", "审核完成", "修订完成"),
    "Sysid": ("RIS", "UIS", "EIS", "ECG", "PIS"),
}
#: States after which the exam has images, so StudyInstanceUID is required (seed: "yes once examined").
EXAMINED_STATES = ("检查完成", "书写完成", "审核完成", "修订完成")
DATETIME_COLUMNS = (
    "RegTime",
    "ReqTime",
    "PerformTime",
    "ReportTime",
    "AuditTime",
    "ReviseTime",
    "ResultDate",
)


@dataclass
class RuleResult:
    rule: str
    description: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ViewReport:
    view: str
    rows: int
    missing_columns: list[str]
    rules: list[RuleResult]
    visible_rows: int = 0
    #: RowTimestamp's kind as the driver returns it, and how the proxy reads it incrementally.
    stamp_kind: str = ""
    stamp: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing_columns and all(r.count == 0 for r in self.rules)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class _Rules:
    def __init__(self, examples: int) -> None:
        self.examples = examples
        self.results: dict[str, RuleResult] = {}

    def rule(self, name: str, description: str) -> RuleResult:
        if name not in self.results:
            self.results[name] = RuleResult(name, description)
        return self.results[name]

    def hit(self, name: str, description: str, examine_id: Any) -> None:
        result = self.rule(name, description)
        result.count += 1
        if len(result.examples) < self.examples:
            result.examples.append(str(examine_id))


def _datetime_ok(value: Any) -> bool:
    if value is None or isinstance(value, dt.datetime):
        return True
    try:
        dt.datetime.fromisoformat(str(value).strip())
        return True
    except ValueError:
        return False


def check_view(config: Config, engine: Engine | None = None, examples: int = 5) -> ViewReport:
    """Run every rule over the view; raises ViewUnavailable if it cannot be read at all."""
    own = engine is None
    eng = engine if engine is not None else make_engine(config.view)
    try:
        return _check(config, eng, examples)
    except SQLAlchemyError as exc:
        raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc
    finally:
        if own:
            eng.dispose()


def _check(config: Config, engine: Engine, examples: int) -> ViewReport:
    table = exam_view_table(config.view.name)
    missing = missing_view_columns(engine, config.view.name)
    if len(missing) == len(COLUMN_NAMES):
        raise ViewUnavailable(f"{config.view.name}: view not found or not readable")
    present = [c for c in COLUMN_NAMES if c not in missing]
    # SQLite is untyped: read datetimes as text so a bad value is reported, not a crash.
    as_text = engine.dialect.name == "sqlite"
    cols = [
        cast(table.c[c], String).label(c) if as_text and c in DATETIME_COLUMNS else table.c[c]
        for c in present
    ]
    rules = _Rules(examples)
    checks = _rule_table(config, present)
    for name, desc, _ in checks:
        rules.rule(name, desc)
    ids: Counter[str] = Counter()
    kinds: Counter[StampKind] = Counter()
    kind_examples: dict[StampKind, list[str]] = {}
    first_seen: dict[str, None] = {}
    total = visible = 0
    with engine.connect() as conn:
        stmt = select(*cols)
        keys = [str(c.key) for c in stmt.selected_columns]
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(stmt)
        for raw in result:
            row = dict(zip(keys, raw, strict=True))
            total += 1
            examine_id = row.get("ExamineID") or "(no ExamineID)"
            for name, desc, broken in checks:
                if broken(row):
                    rules.hit(name, desc, examine_id)
            if "RowTimestamp" in row and row["RowTimestamp"] is not None:
                kind = kind_of(row["RowTimestamp"])
                kinds[kind] += 1
                seen = kind_examples.setdefault(kind, [])
                if len(seen) < examples:
                    seen.append(str(examine_id))
            if row.get("ExamineID") is not None:
                ids[str(row["ExamineID"])] += 1
                first_seen.setdefault(str(row["ExamineID"]), None)
            if row_visible(config, row):
                visible += 1
    dup = rules.rule("ExamineID:duplicate", "ExamineID is not unique")
    for examine_id, n in ids.items():
        if n > 1:
            dup.count += n
            if len(dup.examples) < examples:
                dup.examples.append(examine_id)
    stamp = ""
    main_kind = StampKind.EMPTY
    if "RowTimestamp" in present:
        main_kind = kinds.most_common(1)[0][0] if kinds else StampKind.EMPTY
        mixed = rules.rule("RowTimestamp:kind", "RowTimestamp not of the view's main kind (mixed kinds)")
        for kind, count in kinds.items():
            if kind is not main_kind:
                mixed.count += count
                mixed.examples.extend(kind_examples[kind][: examples - len(mixed.examples)])
        overlap = dt.timedelta(seconds=config.view.stamp_overlap)
        stamp = policy_for(engine, table.c.RowTimestamp, overlap).describe()
    return ViewReport(
        config.view.name,
        total,
        missing,
        list(rules.results.values()),
        visible,
        stamp_kind=main_kind.value,
        stamp=stamp,
    )


Row = dict[str, Any]
Check = tuple[str, str, Callable[[Row], bool]]


def _required(col: str) -> Callable[[Row], bool]:
    return lambda r: _empty(r[col])


def _enum(col: str, allowed: tuple[str, ...]) -> Callable[[Row], bool]:
    return lambda r: not _empty(r[col]) and str(r[col]).strip() not in allowed


def _bad_datetime(col: str) -> Callable[[Row], bool]:
    return lambda r: not _datetime_ok(r[col])


def _bad_age(r: Row) -> bool:
    text = str(r["PatientAge"] or "").strip()
    return bool(text) and not (text.isdigit() and int(text) <= 999)


def _bad_birthday(r: Row) -> bool:
    return not _empty(r["PatientBirthday"]) and not birth_date(r["PatientBirthday"])


def _uid_missing(r: Row) -> bool:
    return (r["State"] or "").strip() in EXAMINED_STATES and not split_uid_cell(r["StudyInstanceUID"])


def _bad_privacy(r: Row) -> bool:
    return r["Privacy"] is not None and str(r["Privacy"]).strip() not in ("0", "1", "2", "3")


def _rule_table(config: Config, present: list[str]) -> list[Check]:
    """(rule, description, predicate) for every rule whose columns exist."""
    have = set(present)
    checks: list[Check] = []
    for col in REQUIRED_COLUMNS:
        if col in have:
            checks.append((f"required:{col}", f"{col} is required but empty", _required(col)))
    for col, allowed in ENUMS.items():
        if col in have:
            checks.append((f"enum:{col}", f"{col} not one of {'/'.join(allowed)}", _enum(col, allowed)))
    for col in DATETIME_COLUMNS:
        if col in have:
            checks.append((f"datetime:{col}", f"{col} is not a date/time", _bad_datetime(col)))
    if "PatientBirthday" in have:
        desc = "PatientBirthday not YYYY-MM-DD, YYYY/MM/DD or YYYYMMDD"
        checks.append(("date:PatientBirthday", desc, _bad_birthday))
    if "PatientAge" in have:
        checks.append(("PatientAge", "PatientAge not a number 0-999", _bad_age))
    if "StudyInstanceUID" in have:
        desc = "StudyInstanceUID holds an invalid UID (PS3.5 9.1)"
        checks.append(("uid:invalid", desc, lambda r: bool(invalid_uid_parts(r["StudyInstanceUID"]))))
        if "State" in have:
            checks.append(("uid:missing", "examined (State) but no valid StudyInstanceUID", _uid_missing))
    if "AccessionNumber" in have:
        desc = "AccessionNumber longer than 16 (SH)"
        checks.append(("AccessionNumber:length", desc, lambda r: len(str(r["AccessionNumber"] or "")) > 16))
    if "HospitalID" in have:
        desc = f"HospitalID is not [hospital].id {config.hospital.id!r}"
        checks.append(("HospitalID", desc, lambda r: (r["HospitalID"] or "") != config.hospital.id))
    if "HospitalName" in have and config.hospital.name:
        desc = f"HospitalName is not [hospital].name {config.hospital.name!r}"
        checks.append(("HospitalName", desc, lambda r: (r["HospitalName"] or "") != config.hospital.name))
    if "Privacy" in have:
        checks.append(("Privacy", "Privacy not 0-3 (NULL counts as 0)", _bad_privacy))
    if "Sysid" in have and "ExamineType" in have:
        desc = "no archive for its Sysid/ExamineType: retrieval fails with 0xC004 (docs/archives.md)"
        checks.append(("route", desc, lambda r: _unroutable(config, r)))
    if "PerformTime" in have and "RegTime" in have:
        desc = "neither PerformTime nor RegTime: no StudyDate"
        checks.append(("StudyDate", desc, lambda r: _empty(r["PerformTime"]) and _empty(r["RegTime"])))
    return checks


def _unroutable(config: Config, r: Row) -> bool:
    try:
        route(config, r["Sysid"], r["ExamineType"])
    except Unroutable:
        return True
    return False


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def format_report(report: ViewReport) -> str:
    """Human-readable: one line per rule, broken rules first."""
    lines = [f"view {report.view}: {report.rows} rows, {report.visible_rows} visible to dicomproxy"]
    if report.stamp:
        lines.append(f"INFO  {report.stamp}")
    if report.missing_columns:
        lines.append(
            f"FAIL  missing columns ({len(report.missing_columns)}): {', '.join(report.missing_columns)}"
        )
    else:
        lines.append("OK    all seed columns present")
    for r in sorted(report.rules, key=lambda r: (r.count == 0, r.rule)):
        if r.count:
            lines.append(
                f"FAIL  {r.rule}: {r.count} row(s) — {r.description}; e.g. ExamineID {', '.join(r.examples)}"
            )
        else:
            lines.append(f"OK    {r.rule}")
    broken = sum(1 for r in report.rules if r.count) + (1 if report.missing_columns else 0)
    lines.append("view OK" if report.ok else f"{broken} rule(s) broken")
    return "\n".join(lines)
