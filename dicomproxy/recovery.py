"""Restart safety (issue 6): spool ↔ journal reconciliation at start-up and ``dicomproxy jobs retry``.

Invariants kept by the relay (:mod:`dicomproxy.relay`): the announced instances of a job are in
``job_expected`` before anything is fetched; an instance's ``job_instances`` row is written
before its spool file is deleted, and the file is deleted only once the destination confirmed it
(Success or Warning). So after a crash, for each announced instance, either the journal says it
was confirmed, or its file is still in the spool, or it was never received — and a retry resends
exactly the unconfirmed ones (at most the one in flight at the crash arrives twice: the Storage
Service does not forbid sending a SOP Instance again, and SCPs keep or overwrite a duplicate —
e.g. Orthanc's ``OverwriteInstances``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from dicomproxy.config import Config
from dicomproxy.errors import DicomServiceError
from dicomproxy.forward import contexts_for, open_destination, send_with_retries
from dicomproxy.journal import InstanceRecord, Journal
from dicomproxy.pacs import RECEIVE_SYNTAXES, InstanceRef, PacsClient, RetrieveKey
from dicomproxy.spool import End, Spool, SpooledInstance
from dicomproxy.store import ReceiveRegistry
from dicomproxy.transcode import policy_for

LOG = logging.getLogger("dicomproxy.recovery")

_JOB_DIR = re.compile(r"^job-(\d+)-")


@dataclass
class ReconcileReport:
    interrupted: list[int] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)


def reconcile(config: Config, journal: Journal) -> ReconcileReport:
    """At start-up: jobs left ``running`` become ``interrupted`` (retryable, their spool kept);
    spool folders or files no journal entry owns go to ``<data_dir>/quarantine/`` (one log line
    each) — never deleted."""
    report = ReconcileReport(interrupted=journal.mark_interrupted())
    for job_id in report.interrupted:
        LOG.warning(
            "job %d was interrupted (process ended); `dicomproxy jobs retry %d` resends it", job_id, job_id
        )
    spool_root = config.data_path / "spool"
    if not spool_root.is_dir():
        return report
    known = journal.job_ids()
    quarantine = config.data_path / "quarantine"
    for entry in sorted(spool_root.iterdir()):
        match = _JOB_DIR.match(entry.name) if entry.is_dir() else None
        if match and int(match.group(1)) in known:
            if any(entry.iterdir()):
                report.kept.append(entry)
            else:
                entry.rmdir()
            continue
        quarantine.mkdir(parents=True, exist_ok=True)
        target = quarantine / entry.name
        if target.exists():
            target = quarantine / f"{entry.name}.{uuid.uuid4().hex[:6]}"
        shutil.move(str(entry), target)
        report.quarantined.append(target)
        LOG.warning("spool entry %s has no journal entry: moved to %s", entry.name, target)
    return report


@dataclass
class RetryResult:
    job_id: int
    unconfirmed: int = 0
    from_spool: int = 0
    refetched: int = 0
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    outcome: str = ""
    error: str = ""


def _spooled(config: Config, job_id: int) -> dict[str, SpooledInstance]:
    """The job's spool files by SOP Instance UID (header read only)."""
    found: dict[str, SpooledInstance] = {}
    for folder in sorted((config.data_path / "spool").glob(f"job-{job_id:06d}-*")):
        for path in sorted(folder.glob("*.dcm")):
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SOPClassUID"])
                item = SpooledInstance(
                    path,
                    str(ds.SOPClassUID),
                    str(ds.SOPInstanceUID),
                    str(ds.file_meta.TransferSyntaxUID),
                    path.stat().st_size,
                )
            except Exception as exc:  # a torn file from the crash: fetched again below
                LOG.warning("job %d: unreadable spool file %s (%s): ignored", job_id, path.name, exc)
                continue
            found.setdefault(item.sop_instance_uid, item)
    return found


def _refetch(
    config: Config, job_id: int, wanted: list[dict[str, Any]]
) -> tuple[dict[str, SpooledInstance], str]:
    """Fetch ``wanted`` again from the PACS at IMAGE level, per series (C-GET only: a C-MOVE to
    us needs our listening port, which the running ``serve`` holds)."""
    if not wanted:
        return {}, ""
    if config.pacs.retrieve != "c-get":
        return (
            {},
            f'{len(wanted)} instance(s) not in the spool; re-fetching them needs [pacs] retrieve = "c-get"',
        )
    spool = Spool(config.data_path / "spool", f"job-{job_id:06d}-retry-{uuid.uuid4().hex[:6]}")
    client = PacsClient(config.pacs, config.proxy.ae_title, ReceiveRegistry(config.proxy.ae_title))
    groups: dict[tuple[str, str], list[InstanceRef]] = defaultdict(list)
    for row in wanted:
        ref = InstanceRef(row["study_uid"], row["series_uid"], row["sop_instance_uid"], row["sop_class_uid"])
        groups[(ref.study_uid, ref.series_uid)].append(ref)
    error = ""
    for (study, series), refs in groups.items():
        key = RetrieveKey(study, (series,), tuple(r.sop_instance_uid for r in refs))
        outcome = client.retrieve(key, refs, spool)
        if outcome.error:
            error = outcome.error
    spool.finish()
    got: dict[str, SpooledInstance] = {}
    while True:
        item = spool.get(timeout=0)
        if item is None or isinstance(item, End):
            break
        got.setdefault(item.sop_instance_uid, item)
    spool.close()
    return got, error


def retry_job(config: Config, journal: Journal, job_id: int) -> RetryResult:
    """Resend the instances of ``job_id`` the destination has not confirmed; update the journal.

    From the spool when the file is still there, else fetched again from the PACS at IMAGE level.
    Raises LookupError for an unknown job, ValueError for a job that cannot be retried.
    """
    from dicomproxy.server import configure_pynetdicom

    configure_pynetdicom()  # files in and out as files, as in `serve` (a CLI process has not done it)
    view = journal.get(job_id)
    if view is None:
        raise LookupError(f"no job {job_id}")
    row = view.row
    if row["outcome"] == "running":
        raise ValueError(
            f"job {job_id} is still running (if the proxy was killed: "
            "start `serve`, which marks it interrupted)"
        )
    if row["kind"] != "move":
        raise ValueError(f"job {job_id} is a C-{row['kind'].upper()}: only the requester can repeat it")
    peer = config.peer(row["destination"])
    if peer is None:
        raise ValueError(f"job {job_id}: destination {row['destination']!r} is no longer a configured peer")
    if row["expected"] and not journal.has_expected(job_id):
        raise ValueError(f"job {job_id} predates the record of announced instances: repeat the C-MOVE")
    result = RetryResult(job_id)
    pending = journal.unconfirmed(job_id)
    result.unconfirmed = len(pending)
    wanted = {r["sop_instance_uid"] for r in pending}
    spooled = _spooled(config, job_id)
    for uid, item in list(spooled.items()):
        if uid not in wanted:  # confirmed and journalled just before a crash: the file may go
            Spool.confirmed(item)
            del spooled[uid]
    result.from_spool = len(spooled)
    fetched, fetch_error = _refetch(
        config, job_id, [r for r in pending if r["sop_instance_uid"] not in spooled]
    )
    result.refetched = len(fetched)
    items = {**fetched, **spooled}
    result.not_found = sorted(wanted - items.keys())
    error = fetch_error
    if items:
        policy = policy_for(config, peer)
        classes = sorted({i.sop_class_uid for i in items.values()})
        contexts = contexts_for(policy, classes, [str(ts) for ts in RECEIVE_SYNTAXES])
        work_dir = config.data_path / "spool" / f"job-{job_id:06d}-out"
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            forwarder = open_destination(peer, config.proxy, contexts, policy, work_dir, None)
        except DicomServiceError as exc:
            error = str(exc)
            forwarder = None
        if forwarder is not None:
            try:
                for uid, item in items.items():
                    proxy = config.proxy
                    res = send_with_retries(
                        forwarder, item, proxy.retries, proxy.retry_delay, f"job {job_id} retry"
                    )
                    ok = res.category in ("Success", "Warning")
                    state = {"Success": "sent", "Warning": "warning"}.get(res.category, "failed")
                    journal.add_instances(
                        job_id,
                        [
                            InstanceRecord(
                                uid,
                                state,
                                item.sop_class_uid,
                                res.status,
                                res.transfer_syntax,
                                res.bytes_out,
                                res.error,
                            )
                        ],
                    )
                    if ok:
                        Spool.confirmed(item)  # journal first, then the file
                        result.sent += 1
                    else:
                        result.failed.append(uid)
            finally:
                forwarder.close()
        with_suppressed_rmdir(work_dir)
    for folder in (config.data_path / "spool").glob(f"job-{job_id:06d}-*"):
        with_suppressed_rmdir(folder)
    left = journal.unconfirmed(job_id)
    completed = journal.confirmed_count(job_id)
    result.outcome = "success" if not left else ("partial" if completed else "failed")
    result.error = error if left else ""
    journal.finish(
        job_id,
        status=0x0000 if not left else (0xB000 if completed else 0xA702),
        outcome=result.outcome,
        error=result.error or (f"{len(left)} instance(s) still not confirmed" if left else ""),
        completed=completed,
        failed=len(left),
    )
    LOG.info(
        "job %d: retry %s, %d resent, %d still unconfirmed", job_id, result.outcome, result.sent, len(left)
    )
    return result


def with_suppressed_rmdir(folder: Path) -> None:
    """Remove ``folder`` if empty (unconfirmed files stay for another retry)."""
    with contextlib.suppress(OSError):
        folder.rmdir()
