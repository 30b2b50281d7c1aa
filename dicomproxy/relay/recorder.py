"""The one instance recorder: a send's result → counted → journalled → spool file dropped.

Every path that sends an instance onward — the pump (one association or several lanes), the
order/report objects of a C-MOVE/C-GET or of a push delivery, ``jobs retry`` and the automatic
resume (both run the same job, :mod:`dicomproxy.relay.engine`) — records it here and nowhere
else. The counting rules live in :class:`~dicomproxy.relay.outcome.JobState` (PS3.4 C.4.2.1.4);
this class only keeps the order that makes a crash safe: the ``job_instances`` row is written
before the spool file goes, and the file goes only once the destination confirmed it (Success or
Warning, PS3.4 B.2.3). A crash between the two leaves a file that a retry recognises as
confirmed, never a confirmed-looking instance without a record.
"""

from __future__ import annotations

from dicomproxy import events
from dicomproxy.relay.confirmation import Confirmation, StoreResponse
from dicomproxy.relay.forward import SendResult
from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.spool import Spool, SpooledInstance


class InstanceRecorder:
    """Records the sub-operations of one job (``state``) in ``journal``."""

    def __init__(self, journal: Journal, state: JobState, confirmation: Confirmation | None = None) -> None:
        self.journal = journal
        self.state = state
        #: What a send's result means (today the C-STORE response: :class:`StoreResponse`).
        self.confirmation = confirmation or StoreResponse()

    def record(self, item: SpooledInstance, res: SendResult, *, extra: bool = False) -> InstanceRecord:
        """Count one sent instance (``extra``: an order/report object, :meth:`JobState.count_extra`),
        journal it, publish it, and drop its spool file once the destination confirmed it."""
        record = InstanceRecord(
            item.sop_instance_uid,
            "failed",
            item.sop_class_uid,
            res.status,
            res.transfer_syntax,
            res.bytes_out,
            res.error,
        )
        category = self.confirmation.category(res)
        (self.state.count_extra if extra else self.state.count)(record, category)
        self.journal.add_instances(self.state.job_id, [record])
        events.publish(
            events.InstanceSent(
                self.state.job_id, record.state, record.transfer_syntax, record.bytes, item.sop_class_uid
            )
        )
        if record.state != "failed":
            Spool.confirmed(item)
        Spool.settled(item)
        return record

    def record_missing(self) -> None:
        """Journal the instances :meth:`JobState.count_missing` named: announced, never sent."""
        missing, self.state.records = self.state.records, []
        self.journal.add_instances(self.state.job_id, missing)
