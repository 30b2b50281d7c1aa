"""The order/report files of a push item (OrderFilePath/ReportFilePath of its view row).

Fetched and encoded by :mod:`dicomproxy.reports` (Encapsulated PDF / Secondary Capture), written
to a folder of the job's spool, C-STOREd to the item's destination on an association of their own
(the forwarder the relay uses, the destination peer's compression), each journalled under the
item's push job by the relay's :class:`~dicomproxy.relay.recorder.InstanceRecorder`. Objects the
destination already confirmed are not sent again.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from sqlalchemy import select

from dicomproxy.config import Config
from dicomproxy.errors import DicomServiceError
from dicomproxy.pacs.client import RECEIVE_SYNTAXES
from dicomproxy.push.queue import Item, PushQueue
from dicomproxy.relay.forward import contexts_for, open_destination, send_with_retries
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.recorder import InstanceRecorder
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.reports.encode import ReportObject
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.reports.study import study_files
from dicomproxy.transcode import policy_for
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.push")


class ItemFiles:
    """Sends an item's order/report files after its images."""

    def __init__(self, config: Config, view: Any, journal: Journal, queue: PushQueue) -> None:
        self.config = config
        #: The exam view (:class:`~dicomproxy.view.service.ExamView`): the item's row.
        self.view = view
        self.journal = journal
        self.queue = queue

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
        if todo and not self._send_objects(item, job_id, todo):
            missing += 1
        return ("sent", True) if not missing else ("pending", False)

    def _view_row(self, examine_id: str) -> dict[str, Any] | None:
        table = self.view.table
        stmt = select(table).where(self.view.visible(), table.c.ExamineID == examine_id)
        for row in self.view.stream(stmt):
            if self.view.is_visible(row) and row.get("ExamineID") == examine_id:
                return row
        return None

    def _send_objects(self, item: Item, job_id: int, objects: list[ReportObject]) -> bool:
        """C-STORE ``objects`` to the item's destination (the forwarder the relay uses), each
        journalled under the push job; True when all were confirmed."""
        peer = self.config.peer(item.destination)
        if peer is None:
            return False
        work = self.config.data_path / "spool" / f"job-{job_id:06d}-reports"
        work.mkdir(parents=True, exist_ok=True)
        files: list[SpooledInstance] = []
        try:
            for obj in objects:
                path = work / f"{obj.sop_instance_uid}.dcm"
                dcmwrite(path, obj.dataset, enforce_file_format=True)
                files.append(
                    SpooledInstance(
                        path,
                        obj.sop_class_uid,
                        obj.sop_instance_uid,
                        str(obj.dataset.file_meta.TransferSyntaxUID),
                        path.stat().st_size,
                    )
                )
            policy = policy_for(self.config, peer)
            classes = sorted({f.sop_class_uid for f in files})
            contexts = contexts_for(policy, classes, [str(ts) for ts in RECEIVE_SYNTAXES])
            try:
                forwarder = open_destination(peer, self.config.proxy, contexts, policy, work, None)
            except DicomServiceError as exc:
                LOG.warning("push item %d: files not sent: %s", item.id, exc)
                return False
            recorder = InstanceRecorder(self.journal, JobState(job_id))
            ok = True
            try:
                for f in files:
                    res = send_with_retries(
                        forwarder,
                        f,
                        self.config.proxy.retries,
                        self.config.proxy.retry_delay,
                        f"push item {item.id}",
                    )
                    ok = recorder.record(f, res, extra=True).state != "failed" and ok
            finally:
                forwarder.close()
            return ok
        finally:
            for f in files:
                f.path.unlink(missing_ok=True)
            _rmdir(work)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
