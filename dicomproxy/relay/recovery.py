"""Restart safety (issue 6): spool ↔ journal reconciliation at start-up and ``dicomproxy jobs retry``.

Invariants kept by the relay (:mod:`dicomproxy.relay.plan`): the announced instances of a job are in
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from dicomproxy.config import Config, PacsConfig, PeerConfig
from dicomproxy.errors import DicomServiceError
from dicomproxy.pacs.client import RECEIVE_SYNTAXES, InstanceRef, PacsClient, RetrieveKey
from dicomproxy.relay.forward import contexts_for, open_destination, send_with_retries
from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.relay.spool import End, Spool, SpooledInstance
from dicomproxy.relay.store import ReceiveRegistry
from dicomproxy.status import JobKind, JobOutcome, Status
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
    outcome: JobOutcome = JobOutcome.INTERRUPTED
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


def job_archives(config: Config, row: dict[str, Any]) -> list[PacsConfig]:
    """The archives that served the job, as its journal row records them (``[pacs]`` for jobs
    that recorded none); a name no longer configured is skipped."""
    names = [n for n in str(row.get("archive") or "").split(",") if n] or ["pacs"]
    by_name = {a.name: a for a in config.all_archives}
    return [by_name[n] for n in names if n in by_name]


def needs_listener(config: Config, row: dict[str, Any]) -> bool:
    """Whether re-fetching this job's instances needs our listening port (a C-MOVE to us)."""
    return any(a.retrieve == "c-move" for a in job_archives(config, row))


def _refetch(
    config: Config,
    row: dict[str, Any],
    wanted: list[dict[str, Any]],
    clients: Mapping[str, PacsClient] | None,
) -> tuple[dict[str, SpooledInstance], str]:
    """Fetch ``wanted`` again at IMAGE level, per series, from the archives that served the job,
    in the order recorded (what the first does not send, the next is asked for).

    C-MOVE archives need ``clients`` that share the receive registry of a listening server (the
    PACS sends to our AE title and port); C-GET archives get a client of their own if needed."""
    job_id = int(row["id"])
    if not wanted:
        return {}, ""
    archives = job_archives(config, row)
    if not archives:
        return {}, f"archive {row.get('archive')!r} of job {job_id} is no longer configured"
    spool = Spool(config.data_path / "spool", f"job-{job_id:06d}-retry-{uuid.uuid4().hex[:6]}")
    got: dict[str, SpooledInstance] = {}
    error = ""
    for archive in archives:
        left = [w for w in wanted if w["sop_instance_uid"] not in got]
        if not left:
            break
        client = (clients or {}).get(archive.name)
        if client is None:
            if archive.retrieve == "c-move":
                error = (
                    f"{len(left)} instance(s) not in the spool; a C-MOVE from {archive.name} to us "
                    "needs the proxy's listener (run `jobs retry` while `serve` runs, or stop it)"
                )
                continue
            client = PacsClient(
                archive, config.proxy.ae_title, ReceiveRegistry(config.proxy.ae_title), archive.name
            )
        groups: dict[tuple[str, str], list[InstanceRef]] = defaultdict(list)
        for w in left:
            ref = InstanceRef(w["study_uid"], w["series_uid"], w["sop_instance_uid"], w["sop_class_uid"])
            groups[(ref.study_uid, ref.series_uid)].append(ref)
        for (study, series), refs in groups.items():
            key = RetrieveKey(study, (series,), tuple(r.sop_instance_uid for r in refs))
            outcome = client.retrieve(key, refs, spool)
            if outcome.error:
                error = f"{archive.name}: {outcome.error}"
        while True:
            item = spool.get(timeout=0)
            if item is None or isinstance(item, End):
                break
            got.setdefault(item.sop_instance_uid, item)
    spool.finish()
    spool.close()
    return got, error


def check_retryable(config: Config, journal: Journal, job_id: int) -> tuple[dict[str, Any], PeerConfig]:
    """The job's row and destination if ``jobs retry`` may act on it. Raises LookupError for an
    unknown job, ValueError (with the reason) for one that cannot be retried."""
    view = journal.get(job_id)
    if view is None:
        raise LookupError(f"no job {job_id}")
    row = view.row
    if row["outcome"] == JobOutcome.RUNNING:
        raise ValueError(
            f"job {job_id} is still running (if the proxy was killed: "
            "start `serve`, which marks it interrupted)"
        )
    if row["kind"] == JobKind.PUSH:
        raise ValueError(f"job {job_id} is a push delivery: `dicomproxy push retry ITEM` resends its study")
    if row["kind"] != JobKind.MOVE:
        raise ValueError(f"job {job_id} is a C-{row['kind'].upper()}: only the requester can repeat it")
    peer = config.peer(row["destination"])
    if peer is None:
        raise ValueError(f"job {job_id}: destination {row['destination']!r} is no longer a configured peer")
    if row["expected"] and not journal.has_expected(job_id):
        raise ValueError(f"job {job_id} predates the record of announced instances: repeat the C-MOVE")
    return row, peer


def retry_job(
    config: Config, journal: Journal, job_id: int, clients: Mapping[str, PacsClient] | None = None
) -> RetryResult:
    """Resend the instances of ``job_id`` the destination has not confirmed; update the journal.

    From the spool when the file is still there, else fetched again at IMAGE level from the
    archive(s) recorded on the job (:func:`_refetch`; ``clients``: a serving process's archive
    clients, needed for C-MOVE archives). Raises LookupError for an unknown job, ValueError for
    a job that cannot be retried.
    """
    from dicomproxy.server import configure_pynetdicom

    configure_pynetdicom()  # files in and out as files, as in `serve` (a CLI process has not done it)
    row, peer = check_retryable(config, journal, job_id)
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
        config, row, [r for r in pending if r["sop_instance_uid"] not in spooled], clients
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
    result.outcome = final_outcome(len(left), completed)
    result.error = error if left else ""
    journal.finish(
        job_id,
        status=final_status(len(left), completed),
        outcome=result.outcome,
        error=result.error or (f"{len(left)} instance(s) still not confirmed" if left else ""),
        completed=completed,
        failed=len(left),
    )
    LOG.info(
        "job %d: retry %s, %d resent, %d still unconfirmed", job_id, result.outcome, result.sent, len(left)
    )
    return result


def final_outcome(unconfirmed: int, confirmed: int) -> JobOutcome:
    """A retried job's outcome from what is still unconfirmed and what was confirmed."""
    if not unconfirmed:
        return JobOutcome.SUCCESS
    return JobOutcome.PARTIAL if confirmed else JobOutcome.FAILED


def final_status(unconfirmed: int, confirmed: int) -> Status:
    """The C-MOVE status the job would end with now (PS3.4 C.4.2.1.5): Success, Warning when
    some sub-operations failed, Refused (0xA702) when all did."""
    if not unconfirmed:
        return Status.SUCCESS
    return Status.SUBOPS_WARNING if confirmed else Status.OUT_OF_RESOURCES_SUBOPS


def with_suppressed_rmdir(folder: Path) -> None:
    """Remove ``folder`` if empty (unconfirmed files stay for another retry)."""
    with contextlib.suppress(OSError):
        folder.rmdir()
