"""The order/report files of a push item (OrderFilePath/ReportFilePath of its view row).

Fetched and encoded by :mod:`dicomproxy.reports` (Encapsulated PDF / Secondary Capture), written
to a folder of the job's spool, and sent to the item's destination as a transfer of their own on
the relay's engine (:meth:`~dicomproxy.relay.engine.Engine.run_to_end`: the destination peer's
compression, nothing fetched), each journalled under the item's push job by the relay's
:class:`~dicomproxy.relay.recorder.InstanceRecorder`. Objects the destination already confirmed
are not sent again.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from sqlalchemy import select

from dicomproxy.config import Config
from dicomproxy.corrections.record import record_correction
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.identity.corrections import revised
from dicomproxy.pacs.client import InstanceRef
from dicomproxy.push.queue import Item, PushQueue
from dicomproxy.relay.destinations import destination_opener
from dicomproxy.relay.engine import Moved, Transfer
from dicomproxy.relay.identities import job_coercer
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.reports.encode import ReportObject
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.reports.study import study_files
from dicomproxy.status import JobOutcome
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.push")


class ItemFiles:
    """Sends an item's order/report files after its images."""

    def __init__(self, config: Config, view: Any, journal: Journal, queue: PushQueue, relay: Any) -> None:
        self.config = config
        #: The relay (:class:`~dicomproxy.relay.plan.RelayService`): its engine sends the files.
        self.relay = relay
        #: The exam view (:class:`~dicomproxy.view.service.ExamView`): the item's row.
        self.view = view
        self.journal = journal
        self.queue = queue
        #: Which object each job sent, and the corrections of revised reports (docs/identity.md).
        self.corrections = CorrectionStore(journal.engine, queue.node)

    def send(self, item: Item, job_id: int | None) -> tuple[str, bool]:
        """Fetch, encode and send the row's order/report files; (state, all delivered)."""
        if not self.config.reports.enabled or job_id is None or not item.files:
            return "none", True
        row = self._view_row(item.examine_id)
        files = study_files(item.study_uid, [row]) if row is not None else []
        if not files:
            return "none", True
        style = name_style_for(self.config, item.destination)
        objects: list[ReportObject] = []
        missing = 0
        for file in files:
            try:
                objects.append(file.make(self.config.reports, style))
            except ReportUnavailable as exc:
                LOG.warning("push item %d: %s file not available: %s", item.id, file.role, exc)
                missing += 1
        confirmed = self.queue.confirmed(item.id, item.generation)
        todo = [o for o in objects if o.sop_instance_uid not in confirmed]
        if todo and not self._send_objects(item, job_id, todo, row):
            missing += 1
        if todo and not missing:
            self._revised(item, todo)
        return ("sent", True) if not missing else ("pending", False)

    def _revised(self, item: Item, sent: list[ReportObject]) -> None:
        """An object of a role the destination held under another UID (the file's bytes changed):
        the superseded one is a correction after delivery (IOCM "report revised")."""
        for obj in sent:
            for old in self.corrections.superseded(
                item.destination, item.study_uid, obj.role, obj.sop_instance_uid
            ):
                correction = revised(item.study_uid, obj.role, old, obj.sop_instance_uid)
                if correction is not None:
                    record_correction(
                        self.config, self.corrections, item.destination, correction, None, None, old
                    )

    def _view_row(self, examine_id: str) -> dict[str, Any] | None:
        table = self.view.table
        stmt = select(table).where(self.view.visible(), table.c.ExamineID == examine_id)
        for row in self.view.stream(stmt):
            if self.view.is_visible(row) and row.get("ExamineID") == examine_id:
                return row
        return None

    def _send_objects(
        self, item: Item, job_id: int, objects: list[ReportObject], row: dict[str, Any] | None
    ) -> bool:
        """C-STORE ``objects`` to the item's destination: a transfer on the relay's engine with
        nothing to fetch (the destination peer's compression, the instance recorder journalling
        each under the push job); True when all were confirmed. What was not confirmed is
        deleted: the next attempt makes the objects afresh."""
        peer = self.config.peer(item.destination)
        if peer is None or self.relay is None:
            return False
        work = self.config.data_path / "spool" / f"job-{job_id:06d}-reports"
        work.mkdir(parents=True, exist_ok=True)
        state = JobState(job_id)
        held: list[SpooledInstance] = []
        try:
            for obj in objects:
                path = work / f"{obj.sop_instance_uid}.dcm"
                dcmwrite(path, obj.dataset, enforce_file_format=True)
                ds = obj.dataset
                held.append(
                    SpooledInstance(
                        path,
                        obj.sop_class_uid,
                        obj.sop_instance_uid,
                        str(ds.file_meta.TransferSyntaxUID),
                        path.stat().st_size,
                    )
                )
                state.expected[obj.sop_instance_uid] = InstanceRef(
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    obj.sop_instance_uid,
                    obj.sop_class_uid,
                )
            self.corrections.record_objects(
                job_id,
                item.study_uid,
                [
                    (o.role, o.sop_instance_uid, o.sop_class_uid, str(o.dataset.SeriesInstanceUID))
                    for o in objects
                ],
            )
            # the timetable caps what leaves the hospital: the order/report files too
            timetable = self.relay.engine.bandwidth.throttle(item.destination)
            opener = destination_opener(self.config, peer, None, timetable)
            classes = sorted({f.sop_class_uid for f in held})
            rows = {item.study_uid: [row]} if row is not None else {}
            coercer = job_coercer(self.config, self.journal, job_id, item.destination, rows, {})
            transfer = Transfer(
                state, [], classes, opener, held=held, discard_unconfirmed=True, coercer=coercer
            )
            _, outcome, error = self.relay.engine.run_to_end(transfer, Moved())
            if outcome != JobOutcome.SUCCESS:
                LOG.warning("push item %d: files not all confirmed: %s", item.id, error or outcome)
            return not state.failed
        finally:
            for f in held:
                f.path.unlink(missing_ok=True)  # a file the transfer never took (it stopped first)
            _rmdir(work)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
