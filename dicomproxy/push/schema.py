"""The push tables, in the journal database (what each holds: :mod:`dicomproxy.push.queue`), and
the states of a queue item. Below the queue and its helper modules, which all read them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

PUSH_METADATA = MetaData()

push_queue = Table(
    "push_queue",
    PUSH_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("destination", String(16), nullable=False),
    Column("examine_id", String(64), nullable=False, default=""),
    #: ``Mark.encode()`` of the view row's RowTimestamp when it was queued (change detection).
    Column("row_stamp", String(128), nullable=False, default=""),
    Column("state", String(12), nullable=False),
    Column("generation", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    #: Times a claim found the item ``running`` with its owner's lease expired (the owner died or
    #: hung during the delivery); past ``[push] max_takeovers`` the item is ``failed``, not run.
    #: Added after the first release: :func:`~dicomproxy.push.queue.migrate` adds it to an existing journal.
    Column("takeovers", Integer, nullable=False, default=0, server_default=text("0")),
    Column("next_at", DateTime, nullable=False),
    Column("lease_until", DateTime),
    Column("owner", String(64), nullable=False, default=""),
    #: Re-checks left (``[push] rechecks``): a ``done`` item with ``rechecks`` > 0 is due for the next
    #: one at ``next_at`` (the PACS asked whether the study grew). 0 = none (also every row of
    #: older versions). Added after the first release: :func:`~dicomproxy.push.queue.migrate` adds it.
    Column("rechecks", Integer, nullable=False, default=0, server_default=text("0")),
    #: ``live`` (the watcher's) or ``backfill`` (``push backfill``: history, its own workers, never
    #: claimed by a live worker). Added after the first release: :func:`~dicomproxy.push.queue.migrate`.
    Column("lane", String(8), nullable=False, default="live", server_default="live"),
    #: The view row changed while the item was running: queue it again when that run ends.
    Column("changed", Integer, nullable=False, default=0),
    #: The images are delivered (only a report is still being fetched).
    Column("images_done", Integer, nullable=False, default=0),
    #: ``""`` (none asked yet), ``sent``, ``none`` (the row names no file), ``pending``, ``missing``.
    Column("reports", String(12), nullable=False, default=""),
    Column("report_attempts", Integer, nullable=False, default=0),
    #: The view row named an order or report file when it was queued (else its row is not re-read).
    Column("files", Integer, nullable=False, default=0),
    Column("confirmed", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("last_job", Integer),
    Column("error", Text, nullable=False, default=""),
    Column("created", DateTime, nullable=False),
    Column("updated", DateTime, nullable=False),
    UniqueConstraint("study_uid", "destination", name="uq_push_queue_study_destination"),
)
Index("ix_push_queue_state_next", push_queue.c.state, push_queue.c.next_at)

push_attempts = Table(
    "push_attempts",
    PUSH_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, nullable=False, index=True),
    Column("job_id", Integer, nullable=False, index=True),
    Column("generation", Integer, nullable=False, default=0),
    Column("node", String(64), nullable=False, default=""),
    Column("started", DateTime, nullable=False),
)

#: ``dicomproxy reconcile --fix`` (docs/operations.md): instances of an item's study its
#: destination was found holding, for one generation, left out of the item's deliveries like the
#: confirmed ones — so a fixed study whose images reached the destination another way (a C-MOVE
#: of the cloud's, an earlier generation) gets only what it lacks. Replaced by the next fix; a new
#: generation (``push requeue``) no longer reads them.
push_skip = Table(
    "push_skip",
    PUSH_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, nullable=False, index=True),
    Column("generation", Integer, nullable=False, default=0),
    Column("sop_instance_uid", String(64), nullable=False),
)

push_state = Table(
    "push_state",
    PUSH_METADATA,
    Column("name", String(64), primary_key=True),
    Column("value", String(512), nullable=False, default=""),
)

QUEUED, RUNNING, WAITING, DONE, FAILED, DROPPED = "queued", "running", "waiting", "done", "failed", "dropped"
#: Stored at a destination asked to commit (``[[peers]] storage_commitment``), not yet all committed:
#: ``done`` once every instance is (:mod:`dicomproxy.push.committing`).
COMMITTING = "committing"
STATES = (QUEUED, RUNNING, WAITING, COMMITTING, DONE, FAILED, DROPPED)
#: The lanes (``push_queue.lane``): the watcher's new exams, and ``push backfill``'s history.
LIVE, BACKFILL = "live", "backfill"
LANES = (LIVE, BACKFILL)
