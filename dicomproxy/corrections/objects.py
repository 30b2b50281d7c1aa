"""The objects a correction sends that are not fetched from the PACS (IOCM; docs/identity.md): the
rejection note, and the corrected copies of the order/report objects push made — made again from the
view's files with the view's identity, under their corrected SOP Instance UIDs.

Sent as the push item's files are (:mod:`dicomproxy.push.files`): a transfer of their own on the
relay's engine with nothing to fetch, journalled as a job that names its study (``reconcile`` counts
what it sent as ours).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from dicomproxy.config import Config
from dicomproxy.identity import identity_of
from dicomproxy.identity.coerce import apply_changes, plan_changes
from dicomproxy.identity.copies import copy_of
from dicomproxy.pacs.client import InstanceRef
from dicomproxy.relay.destinations import destination_opener
from dicomproxy.relay.engine import Moved, Transfer
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.reports.study import study_files
from dicomproxy.status import JobKind, JobOutcome
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.corrections")


def send_datasets(
    config: Config,
    journal: Journal,
    relay: Any,
    destination: str,
    study_uid: str,
    datasets: Sequence[Dataset],
    on_job: Callable[[int], None],
) -> bool:
    """C-STORE ``datasets`` (of ``study_uid``) to ``destination`` as one job (``on_job`` gets its
    ID before anything is sent); True when every one was confirmed."""
    peer = config.peer(destination)
    if peer is None or relay is None or not datasets:
        return False
    job_id = journal.start(JobKind.PUSH, config.proxy.ae_title, "", destination, "")
    on_job(job_id)
    journal.update(job_id, level="STUDY", study_uids=[study_uid])
    work = config.data_path / "spool" / f"job-{job_id:06d}-iocm"
    work.mkdir(parents=True, exist_ok=True)
    state = JobState(job_id)
    moved = Moved()
    held: list[SpooledInstance] = []
    try:
        for ds in datasets:
            uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
            path = work / f"{uid}.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            held.append(SpooledInstance(path, sop_class, uid, syntax, path.stat().st_size))
            state.expected[uid] = InstanceRef(study_uid, str(ds.SeriesInstanceUID), uid, sop_class)
        # the bandwidth timetable caps what leaves the hospital: notes and corrected objects too
        opener = destination_opener(config, peer, None, relay.engine.bandwidth.throttle(destination))
        classes = sorted({h.sop_class_uid for h in held})
        transfer = Transfer(state, [], classes, opener, held=held, discard_unconfirmed=True)
        final, outcome, error = relay.engine.run_to_end(transfer, moved)
        relay.engine.close(state, final, outcome, error, moved)
        if outcome != JobOutcome.SUCCESS:
            LOG.warning("job %d: correction objects not all confirmed: %s", job_id, error or outcome.value)
        return outcome == JobOutcome.SUCCESS and not state.failed
    finally:
        for h in held:
            h.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            work.rmdir()


def corrected_objects(
    config: Config, view: Any, study_uid: str, destination: str, fingerprint: str
) -> list[tuple[str, Dataset]]:
    """(role, data set) of the study's order/report objects made again from the view's files, with
    its identity (as the push item's are) and their corrected SOP Instance UIDs; [] when the study
    has no visible row. Raises ReportUnavailable when a file cannot be fetched."""
    rows = view.study_rows([study_uid]).get(study_uid, [])
    if not rows:
        return []
    style = name_style_for(config, destination)
    identity = identity_of(study_uid, rows, style, config.hospital)
    out: list[tuple[str, Dataset]] = []
    for file in study_files(study_uid, rows):
        obj = file.make(config.reports, style)
        ds = obj.dataset
        apply_changes(ds, plan_changes(ds, identity), system=config.proxy.ae_title, source="")
        copy_of(ds, fingerprint, system=config.proxy.ae_title)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append((obj.role, ds))
    return out
