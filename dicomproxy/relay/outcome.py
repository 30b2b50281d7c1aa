"""A relay job's outcome: its sub-operation counts, per-instance records and final status.

Pure bookkeeping (no sockets, no files, no journal): :mod:`dicomproxy.relay.plan` counts each
onward C-STORE here and asks here how the job ends; the journal and the spool act on the
records it returns. The rules are PS3.4 C.4.2.1.4 (counts), C.4.2.1.5 / C.4.3.1.5 (final status):

- 0x0000 Success: nothing failed, no warnings (also zero sub-operations);
- 0xB000 Warning: some sub-operations failed or warned (Failed SOP Instance UID List);
- 0xA702 Refused: all sub-operations failed (the destination rejected all, or was lost first);
- the PACS's failure status (0xC002 …) when the PACS failed before anything was sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dicomproxy.errors import DicomServiceError
from dicomproxy.pacs.client import InstanceRef
from dicomproxy.relay.journal import InstanceRecord
from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.relay.upstream import Finder
from dicomproxy.status import JobOutcome, Status


@dataclass
class JobState:
    """Counts of one job (sub-operations, PS3.4 C.4.2.1.4)."""

    job_id: int
    expected: dict[str, InstanceRef] = field(default_factory=dict)
    processed: set[str] = field(default_factory=set)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    records: list[InstanceRecord] = field(default_factory=list)
    #: time.monotonic() marks: job start, instance list known, destination open, first instance sent.
    marks: dict[str, float] = field(default_factory=lambda: {"start": time.monotonic()})
    #: Number of Study Related Instances when the job started before its instance list was known.
    announced: int = 0
    #: The IMAGE-level C-FIND running beside an early-started job; None once merged (or never).
    finder: Finder | None = None
    #: Order/report objects announced (``[reports] in_retrieve``), and those not yet sent or failed.
    files: int = 0
    extras: int = 0
    #: SOP Instance UIDs of the order/report objects processed (not the PACS's instances).
    extra_uids: set[str] = field(default_factory=set)
    #: Announced instances that never reached the onward C-STORE (:meth:`count_missing`).
    missing_uids: list[str] = field(default_factory=list)
    #: (len(processed), len(expected), how many of ``processed`` are in ``expected``): both only grow,
    #: so equal sizes mean the same count; kept up to date by :meth:`count` (issue 29: the pump asks
    #: :attr:`remaining` twice per instance, and an intersection per call made a 2,000-slice move
    #: quadratic).
    _matched: tuple[int, int, int] = field(default=(-1, -1, 0), init=False, repr=False, compare=False)

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic())

    def timing(self) -> str:
        """``in 1.62 s (found 0.21, destination 0.23, first sent 0.30)`` for the job's last log line."""
        start = self.marks["start"]
        parts = [
            f"{k} {self.marks[k] - start:.2f}"
            for k in ("found", "destination", "first sent")
            if k in self.marks
        ]
        return f"in {time.monotonic() - start:.2f} s" + (f" ({', '.join(parts)})" if parts else "")

    @property
    def counted(self) -> bool:
        """Whether Number of Remaining Sub-operations is known, which every Pending response carries
        (PS3.4 C.4.2.1.6): not for a job started before a PACS that announces no count listed it."""
        return self.finder is None or self.announced > 0

    @property
    def remaining(self) -> int:
        if not self.expected and self.announced:  # list not known (yet): count from the announced total
            return max(0, self.announced - len(self.processed - self.extra_uids)) + self.extras
        return max(0, len(self.expected) - self._processed_expected()) + self.extras

    def _processed_expected(self) -> int:
        """``len(processed & expected.keys())``, counted again only when the sizes changed otherwise
        than through :meth:`_processed_one`."""
        n_processed, n_expected, matched = self._matched
        if n_processed != len(self.processed) or n_expected != len(self.expected):
            matched = len(self.processed & self.expected.keys())
            self._matched = (len(self.processed), len(self.expected), matched)
        return matched

    def _processed_one(self, uid: str) -> None:
        """Add ``uid`` to ``processed``, keeping the count of :meth:`_processed_expected` current."""
        if uid in self.processed:
            return
        n_processed, n_expected, matched = self._matched
        current = n_processed == len(self.processed) and n_expected == len(self.expected)
        self.processed.add(uid)
        if current:
            self._matched = (n_processed + 1, n_expected, matched + (uid in self.expected))

    def response(self, status: int, comment: str = "") -> RetrieveResponse:
        return RetrieveResponse(
            status,
            remaining=self.remaining,
            completed=self.completed,
            failed=self.failed,
            warning=self.warning,
            failed_uids=list(self.failed_uids),
            comment=comment,
        )

    def count(self, record: InstanceRecord, category: str) -> None:
        """One sub-operation done: ``category`` is the C-STORE status category (Success,
        Warning, anything else = failed); ``record.state`` is set to match."""
        self._processed_one(record.sop_instance_uid)
        self.mark("first sent")
        if category == "Success":
            self.completed += 1
            record.state = "sent"
        elif category == "Warning":
            self.warning += 1
            record.state = "warning"
        else:
            self.failed += 1
            self.failed_uids.append(record.sop_instance_uid)
            record.state = "failed"

    def count_extra(self, record: InstanceRecord, category: str) -> None:
        """One order/report object sent (:meth:`count` for an object the PACS does not hold)."""
        self.extras -= 1
        self.extra_uids.add(record.sop_instance_uid)
        self.count(record, category)

    def count_unavailable(self) -> None:
        """An announced order/report file that could not be fetched: a failed sub-operation
        without a SOP Instance UID (it depends on the bytes never read)."""
        self.extras -= 1
        self.failed += 1

    def count_missing(self) -> None:
        """Announced instances that never arrived (or could not be sent) are failed sub-operations."""
        self.failed += self.extras  # order/report objects never sent (the job stopped first)
        self.extras = 0
        pacs_done = len(self.processed - self.extra_uids)
        if not self.expected and self.announced > pacs_done:
            self.failed += self.announced - pacs_done  # list unknown: no UIDs to name
            return
        for uid, ref in self.expected.items():
            if uid not in self.processed:
                self.processed.add(uid)
                self.failed += 1
                self.failed_uids.append(uid)
                self.missing_uids.append(uid)
                self.records.append(InstanceRecord(uid, "missing", ref.sop_class_uid, error="never received"))

    def stopped_by(self, exc: DicomServiceError) -> tuple[RetrieveResponse, JobOutcome, str]:
        """The job ends on ``exc`` before or instead of sending (the PACS or the destination cannot
        be reached, the identifier is not understood, …): what was not sent is failed. A job that
        already has confirmed instances (a retry's earlier attempts) ends partial (0xB000);
        otherwise the exception's own status is the answer (PS3.4 C.4.2.1.5), 0xA801/0xA900
        meaning the request was refused."""
        self.failed += self.remaining
        self.extras = 0
        if self.completed or self.warning:
            return self.response(Status.SUBOPS_WARNING), JobOutcome.PARTIAL, str(exc)
        refused = exc.status in (Status.MOVE_DESTINATION_UNKNOWN, Status.IDENTIFIER_MISMATCH)
        outcome = JobOutcome.REFUSED if refused else JobOutcome.FAILED
        return self.response(exc.status, exc.comment), outcome, str(exc)

    def final(
        self, pacs_error: BaseException | None, dest_error: str, *, nothing_sent: bool
    ) -> tuple[RetrieveResponse, JobOutcome, str]:
        """The job's final response, outcome and error text, once every instance is counted
        (:meth:`count_missing` first). ``pacs_error``: why the retrieval ended early, if it did;
        ``dest_error``: why sending stopped, if it did; ``nothing_sent``: no instance reached
        the onward C-STORE (then a PACS failure is the job's status)."""
        if pacs_error is not None and nothing_sent and not self.completed and not self.warning:
            if isinstance(pacs_error, DicomServiceError):
                status, comment = pacs_error.status, pacs_error.comment
            else:
                status, comment = Status.PACS_UNAVAILABLE, "PACS failed"
            return self.response(status, comment), JobOutcome.FAILED, str(pacs_error)
        error = dest_error or (str(pacs_error) if pacs_error else "")
        if not self.failed and not self.warning:
            return self.response(Status.SUCCESS), JobOutcome.SUCCESS, error
        if not self.completed and not self.warning:
            comment = dest_error or (str(pacs_error) if pacs_error else "all sub-operations failed")
            return self.response(Status.OUT_OF_RESOURCES_SUBOPS, comment), JobOutcome.FAILED, error
        return self.response(Status.SUBOPS_WARNING), JobOutcome.PARTIAL, error
