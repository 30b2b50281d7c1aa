"""Order and report objects in C-MOVE/C-GET answers (``[reports] in_retrieve``).

:func:`plan_reports` takes the files of the request's studies out of the request: all of them at
the STUDY/PATIENT level, those whose series a SERIES-level key names, and at the IMAGE level the
object whose SOP Instance UID is asked for (fetched at once: the UID depends on the file). What
is left goes to the PACS as before. Each file is one sub-operation, announced with the PACS's
instances (PS3.4 C.4.2.1.4).

:class:`ReportFetch` fetches and encodes the files in a thread of its own while the PACS's
instances flow; the pump sends the objects after them on the same onward association (or the
C-GET requester's), journalled like every instance — in ``job_expected`` before they are sent,
so ``jobs retry`` resends an unconfirmed one from the spool. A file that cannot be fetched is a
failed sub-operation (its SOP Instance UID is not known, so it is not in the Failed SOP Instance
UID List); the reason is logged and is the job's error text. It never holds back the images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydicom import dcmwrite

from dicomproxy.config import NameStyle, ReportsConfig
from dicomproxy.pacs.client import InstanceRef, RetrieveKey
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.relay.spool import Spool, SpooledInstance
from dicomproxy.reports.encode import ReportObject, role_of_series
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.reports.study import StudyFile, study_files

LOG = logging.getLogger("dicomproxy.relay")

Routed = list[tuple[RetrieveKey, StudyRef]]
RowsOf = Callable[[Sequence[str]], Mapping[str, Sequence[Mapping[str, Any]]]]


@dataclass(frozen=True)
class ReportWork:
    """One file a job sends; ``ready`` when it was fetched at planning (an IMAGE-level key)."""

    file: StudyFile
    ready: ReportObject | None = None


def plan_reports(
    routed: Routed, rows_of: RowsOf, config: ReportsConfig, style: NameStyle
) -> tuple[Routed, list[ReportWork]]:
    """(what the PACS still serves, the files the job sends) for the request's keys."""
    rows = rows_of([key.study_uid for key, _ in routed]) if routed else {}
    left: Routed = []
    work: list[ReportWork] = []
    for key, ref in routed:
        files = study_files(key.study_uid, rows.get(key.study_uid, []))
        if not key.series_uids:  # STUDY / PATIENT level: the whole study, files included
            work.extend(ReportWork(f) for f in files)
            left.append((key, ref))
            continue
        roles = {role_of_series(key.study_uid, s) for s in key.series_uids} - {None}
        series = tuple(s for s in key.series_uids if role_of_series(key.study_uid, s) is None)
        if series:  # never an empty series list: that would be the whole study
            left.append((RetrieveKey(key.study_uid, series, key.sop_uids), ref))
        for file in (f for f in files if f.role in roles):
            if not key.sop_uids:
                work.append(ReportWork(file))
                continue
            try:  # IMAGE level: only the object asked for, whose UID the bytes decide
                obj = file.make(config, style)
            except ReportUnavailable as exc:
                LOG.warning("%s file of a requested study not available: %s", file.role, exc)
                continue
            if obj.sop_instance_uid in key.sop_uids:
                work.append(ReportWork(file, obj))
    return left, work


def _make(work: ReportWork, config: ReportsConfig, style: NameStyle) -> ReportObject:
    return work.ready or work.file.make(config, style)


class ReportFetch:
    """Fetches and encodes a job's files, in order, in one thread beside the PACS transfer."""

    def __init__(self, work: list[ReportWork], config: ReportsConfig, style: NameStyle) -> None:
        self.work = work
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-reports")
        self.futures: list[Future[ReportObject]] = [self._pool.submit(_make, w, config, style) for w in work]
        #: Why files were not sent (the job's error text).
        self.errors: list[str] = []

    def __len__(self) -> int:
        return len(self.work)

    def unavailable(self, index: int, exc: ReportUnavailable) -> None:
        role = self.work[index].file.role
        self.errors.append(f"{role} file not available: {exc}")

    @staticmethod
    def spooled(obj: ReportObject, spool: Spool) -> tuple[SpooledInstance, InstanceRef]:
        """Write ``obj`` into the job's spool folder: the file the pump sends, and its
        ``job_expected`` entry (journalled before it is sent)."""
        path = spool.dir / f"report-{obj.sop_instance_uid}.dcm"
        dcmwrite(path, obj.dataset, enforce_file_format=True)
        ds = obj.dataset
        item = SpooledInstance(
            path,
            obj.sop_class_uid,
            obj.sop_instance_uid,
            str(ds.file_meta.TransferSyntaxUID),
            path.stat().st_size,
        )
        ref = InstanceRef(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), obj.sop_instance_uid, obj.sop_class_uid
        )
        return item, ref

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
