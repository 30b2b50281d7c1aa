"""The tables of corrections after delivery (IOCM; docs/identity.md), in the journal database:
``corrections`` (one per destination, study and delivered identity), ``correction_jobs`` (the jobs
that carried one out) and ``correction_state`` (the detector's watermark, shared by the nodes).
What they hold: :mod:`dicomproxy.corrections.store`. What the deliveries were about
(``delivered_exams``, ``delivered_objects``) is the relay journal's
(:mod:`dicomproxy.relay.delivered`)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, UniqueConstraint

CORRECTIONS_METADATA = MetaData()

WARNED, DUE, RUNNING, DONE, FAILED = "warned", "due", "running", "done", "failed"
STATES = (WARNED, DUE, RUNNING, DONE, FAILED)
#: Roles of the jobs a correction runs (``relinked``: the new study of a re-linked exam).
NOTE, COPIES, OBJECTS, RELINKED = "note", "copies", "objects", "relinked"

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

correction_jobs = Table(
    "correction_jobs",
    CORRECTIONS_METADATA,
    Column("correction_id", Integer, primary_key=True, autoincrement=False),
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("role", String(8), nullable=False),
)

#: Named values shared by the nodes (the detector's watermark): name → text.
correction_state = Table(
    "correction_state",
    CORRECTIONS_METADATA,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
