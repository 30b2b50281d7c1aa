"""The tables of corrections after delivery (IOCM; docs/identity.md), in the journal database
beside the push queue: ``corrections`` (one per destination, study and delivered identity),
``correction_jobs`` (the jobs that carried one out) and ``delivered_objects`` (the order/report
objects push made and sent). What they hold: :mod:`dicomproxy.push.corrections_store`."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, UniqueConstraint

CORRECTIONS_METADATA = MetaData()

WARNED, DUE, RUNNING, DONE, FAILED = "warned", "due", "running", "done", "failed"
STATES = (WARNED, DUE, RUNNING, DONE, FAILED)
#: Roles of the jobs a correction runs.
NOTE, COPIES, OBJECTS = "note", "copies", "objects"

corrections = Table(
    "corrections",
    CORRECTIONS_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination", String(16), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("old_digest", String(64), nullable=False),
    Column("fingerprint", String(32), nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("new_digest", String(64), nullable=False, default=""),
    Column("relinked_to", String(64), nullable=False, default=""),
    #: The superseded order/report object (report revised only).
    Column("object_uid", String(64), nullable=False, default=""),
    Column("changed", String(255), nullable=False, default=""),  # field names, no values
    Column("state", String(8), nullable=False),
    Column("note_uid", String(64), nullable=False, default=""),
    Column("referenced", Integer, nullable=False, default=0),  # instances the note rejects
    Column("copies", Integer, nullable=False, default=0),  # corrected copies confirmed
    Column("attempts", Integer, nullable=False, default=0),
    Column("owner", String(64), nullable=False, default=""),
    Column("lease_until", DateTime),
    Column("next_at", DateTime, nullable=False),
    Column("detected", DateTime, nullable=False),
    Column("ended", DateTime),
    Column("error", Text, nullable=False, default=""),
    UniqueConstraint("destination", "study_uid", "old_digest", name="uq_corrections_delivery"),
)

#: The order/report objects push made and sent (:mod:`dicomproxy.push.files`), per job: their role
#: and series, which the journal's ``job_expected`` (the PACS's instances) does not hold.
delivered_objects = Table(
    "delivered_objects",
    CORRECTIONS_METADATA,
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("role", String(8), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
)

correction_jobs = Table(
    "correction_jobs",
    CORRECTIONS_METADATA,
    Column("correction_id", Integer, primary_key=True, autoincrement=False),
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("role", String(8), nullable=False),
)
