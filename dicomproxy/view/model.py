"""SQLAlchemy model of the exam view, column by column as the seed document names them.

Hospitals create the view without quoting identifiers, so Oracle stores ``EXAMINEID``,
PostgreSQL ``examineid`` and SQL Server/MariaDB/SQLite compare case-insensitively. We emit
every identifier in lower case and unquoted, which each of those databases folds to the
name it stored; the Python-side key keeps the seed's spelling (``row.ExamineID``).
See ../shared/exam-view.md "Identifier case".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, Unicode, false, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import quoted_name
from sqlalchemy.types import TypeEngine

from dicomproxy.view.stamp import RowStamp

#: varchar(2000) columns; MariaDB's 64 KiB row limit (utf8mb4) needs TEXT there.
_LONG = String(2000).with_variant(Text(), "mysql", "mariadb")

#: (seed name, type, required) — the seed's order and types.
COLUMNS: tuple[tuple[str, TypeEngine[Any], bool], ...] = (
    ("ExamineID", String(64), True),
    ("MedNo", String(20), False),
    ("IdNumber", String(20), False),
    ("HealthCardNO", String(64), False),
    ("CardNo", String(36), False),
    ("MedRecNo", String(20), False),
    ("PatientID", String(64), False),
    ("PIDAssigningAuthority", String(64), False),
    ("BarCodeNo", String(64), False),
    ("OutPatientNo", String(20), False),
    ("InPatientNo", String(20), False),
    ("AreaNo", String(64), False),
    ("BedNo", String(50), False),
    ("HisExamineId", String(20), False),
    ("OrderSeries", String(36), False),
    ("VisitIDAssigningAuthority", String(64), False),
    ("PatientName", String(64), True),
    ("PatientSex", String(4), False),
    ("PatientAge", String(16), False),
    ("PatientAgeUnit", String(16), False),
    ("PatientBirthday", String(10), False),
    ("Address", String(150), False),
    ("Professional", String(30), False),
    ("Company", String(150), False),
    ("PhoneCode", String(20), False),
    ("PatientType", String(30), False),
    ("AllergicHistory", _LONG, False),
    ("PatientDesc", _LONG, False),
    ("ClinicDiagnosis", _LONG, False),
    ("MedicalRecord", _LONG, False),
    ("AccessionNumber", String(16), True),
    ("ExamineType", String(16), True),
    ("ExamineItem", String(50), False),
    ("ExamineItemID", String(50), False),
    ("ExamineBodyPart", String(255), False),
    ("ExamineBodyPartACR", String(255), False),
    ("ExamineRoom", String(64), False),
    ("ExamineEquipment", String(64), False),
    ("ExamineEquipmentID", String(64), False),
    ("Register", String(20), False),
    ("RegisterID", String(20), False),
    ("RegTime", DateTime(), False),
    ("ReqOffice", String(40), False),
    ("ReqOfficeID", String(20), False),
    ("ReqDoctor", String(20), False),
    ("ReqDoctorID", String(20), False),
    ("ReqTime", DateTime(), False),
    ("PerformTime", DateTime(), False),
    ("PerformTechnician", String(20), False),
    ("PerformTechnicianID", String(20), False),
    ("ExamineTechnology", String(255), False),
    ("ReportTime", DateTime(), False),
    ("ReportPhysician", String(20), False),
    ("ReportPhysicianID", String(20), False),
    ("AuditTime", DateTime(), False),
    ("AuditDoctor", String(20), False),
    ("AuditDoctorID", String(20), False),
    ("ReviseTime", DateTime(), False),
    ("ReviseDoctor", String(20), False),
    ("ReviseDoctorID", String(20), False),
    ("ResultDate", DateTime(), False),
    ("DoctorPhone", String(20), False),
    ("ImageSight", _LONG, False),
    ("ImageDiagnosis", _LONG, False),
    ("IsMasculine", String(15), False),
    ("CriticalValue", String(255), False),
    ("InfectionName", String(255), False),
    ("Annotation", _LONG, False),
    ("State", String(10), True),
    ("PregnancyFlag", Integer(), False),
    ("Privacy", Integer(), False),
    ("HospitalID", String(64), True),
    ("HospitalName", String(64), True),
    ("StudyInstanceUID", String(512), False),  # required once the exam is done
    ("OrderFilePath", String(256), False),
    ("ReportFilePath", String(256), False),
    ("RowTimestamp", RowStamp(), True),  # opaque and ordered: rowversion or date-time (stamp.py)
    ("Sysid", String(10), True),
)

COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _, _ in COLUMNS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(name for name, _, req in COLUMNS if req)


def split_view_name(name: str) -> tuple[str | None, str]:
    """``[dbo].[V_IMAGE_CLOUD]`` / ``ris.v_image_cloud`` → (schema, view), brackets and quotes dropped."""
    parts = [p.strip().strip('[]"`') for p in name.strip().split(".")]
    if not parts or not all(parts) or len(parts) > 2:
        raise ValueError(f"invalid view name {name!r}: expected VIEW or SCHEMA.VIEW")
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


def _unquoted(name: str) -> quoted_name:
    return quoted_name(name.lower(), quote=False)


def _bind_type(typ: TypeEngine[Any], unicode_params: bool) -> TypeEngine[Any]:
    """varchar(n) columns as ``String`` (bound as varchar: SQL_VARCHAR on pyodbc) or, for a
    view whose columns are nvarchar, ``Unicode`` (bound as nvarchar)."""
    if unicode_params and type(typ) is String and typ.length is not None:
        return Unicode(typ.length)
    return typ


def exam_view_table(
    view_name: str, metadata: MetaData | None = None, *, unicode_params: bool = False
) -> Table:
    """The view as a read-only :class:`~sqlalchemy.Table`; ``table.c.ExamineID`` etc.

    Parameters compared with a column take that column's type, so on SQL Server a lookup on a
    varchar column is bound as varchar: an nvarchar parameter would make the server convert
    the column (CONVERT_IMPLICIT) and scan instead of seeking its index. ``unicode_params``
    is for views whose columns are nvarchar (``[view].unicode_params``).
    """
    schema, name = split_view_name(view_name)
    md = metadata if metadata is not None else MetaData()
    return Table(
        _unquoted(name),
        md,
        *(Column(_unquoted(col), _bind_type(typ, unicode_params), key=col) for col, typ, _ in COLUMNS),
        schema=_unquoted(schema) if schema else None,
    )


def missing_view_columns(engine: Engine, view_name: str) -> list[str]:
    """Columns of the seed the view lacks (one probe query, then one per column if needed)."""
    table = exam_view_table(view_name)
    with engine.connect() as conn:
        try:
            conn.execute(select(*table.c).where(false())).fetchall()
            return []
        except SQLAlchemyError:
            conn.rollback()
        missing = []
        for name in COLUMN_NAMES:
            try:
                conn.execute(select(table.c[name]).where(false())).fetchall()
            except SQLAlchemyError:
                conn.rollback()
                missing.append(name)
        return missing
