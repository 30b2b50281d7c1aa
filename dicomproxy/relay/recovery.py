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
import json
import logging
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from dicomproxy.config import Config, PacsConfig, PeerConfig
from dicomproxy.errors import DicomServiceError
from dicomproxy.pacs.client import InstanceRef, PacsClient, RetrieveKey
from dicomproxy.pacs.store import ReceiveRegistry
from dicomproxy.relay.destinations import destination_opener
from dicomproxy.relay.engine import Engine, Fetch, Moved, PoolKeeper, Transfer
from dicomproxy.relay.identities import retry_coercer
from dicomproxy.relay.journal import JobKey, Journal
from dicomproxy.relay.listing import by_series, record_routed, routed_keys
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.request import StudyResolver, parse_keys
from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.relay.spool import Spool, SpooledInstance
from dicomproxy.status import JobKind, JobOutcome
from dicomproxy.transport import recycle
from dicomproxy.transport.pynetdicom_compat import stream_datasets_to_files
from dicomproxy.transport.raw.dimse import clear_partial

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
    each) — never deleted. Confirmed files the last process kept for reuse
    (:mod:`dicomproxy.transport.recycle`) and the files it was receiving into
    (:func:`~dicomproxy.transport.raw.dimse.clear_partial`) are deleted."""
    recycle.clear(config.data_path / "incoming" / recycle.FOLDER)
    partial = clear_partial(config.data_path / "incoming")
    if partial:  # a kill while an archive's C-STORE was being received (its resume fetches it again)
        LOG.warning("deleted %d partly received instance file(s) the last process left", partial)
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


def _clients_for(
    config: Config, row: dict[str, Any], clients: Mapping[str, PacsClient] | None
) -> tuple[dict[str, PacsClient], str]:
    """A client for each archive that served the job: the serving process's (``clients``, which
    share its receive registry: a C-MOVE delivers to our listening port), or one of its own for a
    C-GET archive. An archive whose C-MOVE needs the listener we do not have is left out (the
    reason is returned)."""
    got: dict[str, PacsClient] = {}
    error = ""
    archives = job_archives(config, row)
    if not archives:
        return got, f"archive {row.get('archive')!r} of job {row['id']} is no longer configured"
    for archive in archives:
        client = (clients or {}).get(archive.name)
        if client is None and archive.retrieve == "c-move":
            error = (
                f"a C-MOVE from {archive.name} to us needs the proxy's listener "
                "(run `jobs retry` while `serve` runs, or stop it)"
            )
            continue
        got[archive.name] = client or PacsClient(
            archive, config.proxy.ae_title, ReceiveRegistry(config.proxy.ae_title), archive.name
        )
    return got, error


def _wanted(
    config: Config, journal: Journal, row: dict[str, Any], finders: Mapping[str, PacsClient]
) -> list[InstanceRef]:
    """The announced instances of the job its destination has not confirmed. A job killed before
    its instance list was journalled (an early start whose listing had not finished) lists its
    recorded keys again at IMAGE level (PS3.4 C.6.2) from the archive recorded on the job, and
    journals that list first. Raises ValueError when there is nothing to list from."""
    job_id = int(row["id"])
    if journal.has_expected(job_id):
        return [_ref(r) for r in journal.unconfirmed(job_id)]
    keys = journal.keys(job_id)
    if not keys and row.get("level") in ("STUDY", "PATIENT"):  # a journal from before job_keys
        keys = [JobKey(uid) for uid in json.loads(row.get("study_uids") or "[]")]
    if not keys:
        if row["expected"]:
            raise ValueError(f"job {job_id} predates the record of announced instances: repeat the C-MOVE")
        if not row.get("level") and row["outcome"] != JobOutcome.EMPTY:
            raise ValueError(  # a journal from before job_requests
                f"job {job_id} ended before its request was resolved in the exam view "
                "(nothing was fetched or sent): repeat the C-MOVE"
            )
        return []
    listed: dict[str, InstanceRef] = {}
    for key in keys:
        client = finders.get(key.archive) or next(iter(finders.values()), None)
        if client is None:
            raise ValueError(f"job {job_id}: no archive it was served by can be asked for its instances")
        for ref in client.find_instances(RetrieveKey(key.study_uid, key.series_uids, key.sop_uids)):
            listed.setdefault(ref.sop_instance_uid, ref)
    LOG.info("job %d: its instance list was not journalled; %d listed again", job_id, len(listed))
    journal.update(job_id, expected=len(listed))
    journal.add_expected(job_id, [asdict(r) for r in listed.values()])
    confirmed = journal.confirmed_uids(job_id)
    return [r for uid, r in listed.items() if uid not in confirmed]


def _resolve_again(
    config: Config, journal: Journal, row: dict[str, Any], resolver: StudyResolver | None
) -> dict[str, Any]:
    """A C-MOVE killed before its keys were recorded (while the exam view resolved its request):
    its Identifier, kept from its start, is resolved and routed again exactly as the relay does
    (:func:`parse_keys`, visibility included; :func:`routed_keys`) and journalled. The job's row
    afterwards (its archive recorded). Raises ValueError when it cannot be resolved."""
    job_id = int(row["id"])
    request = journal.request(job_id)
    if request is None:
        return row
    if resolver is None:
        raise ValueError(
            f"job {job_id} ended before its request was resolved: resolving it again needs the exam view"
        )
    try:
        level, routed = parse_keys(Dataset.from_json(request), resolver)
        keys = routed_keys(config, routed)
    except DicomServiceError as exc:
        raise ValueError(f"job {job_id}: its request cannot be resolved again: {exc}") from exc
    journal.update(job_id, level=level, study_uids=[k.study_uid for k in keys])
    record_routed(journal, job_id, keys)
    LOG.info("job %d: ended before its request was resolved; resolved again: %d stud(ies)", job_id, len(keys))
    view = journal.get(job_id)
    assert view is not None  # the row was read above; jobs are never deleted
    return view.row


def _ref(row: Mapping[str, Any]) -> InstanceRef:
    return InstanceRef(row["study_uid"], row["series_uid"], row["sop_instance_uid"], row["sop_class_uid"])


def _fetch_list(
    journal: Journal, job_id: int, refs: list[InstanceRef], clients: Mapping[str, PacsClient], first: str
) -> tuple[Fetch, int]:
    """IMAGE-level keys, per series, at the archive that served each study (recorded with the
    job's keys; else the first archive recorded on the job); and how many instances have no
    client to fetch them."""
    served_by = {k.study_uid: k.archive for k in journal.keys(job_id)}
    by_archive: dict[str, list[InstanceRef]] = defaultdict(list)
    for ref in refs:
        by_archive[served_by.get(ref.study_uid) or first].append(ref)
    fetch: Fetch = []
    unreachable = 0
    for name, some in by_archive.items():
        client = clients.get(name)
        if client is None:
            unreachable += len(some)
            continue
        by_study: dict[str, list[InstanceRef]] = defaultdict(list)
        for ref in some:
            by_study[ref.study_uid].append(ref)
        for study, rs in by_study.items():
            fetch.extend((client, key, part) for key, part in by_series(study, rs))
    return fetch, unreachable


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
    return row, peer


def retry_job(
    config: Config,
    journal: Journal,
    job_id: int,
    clients: Mapping[str, PacsClient] | None = None,
    engine: Engine | None = None,
    resolver: StudyResolver | None = None,
) -> RetryResult:
    """Resend the instances of ``job_id`` the destination has not confirmed; update the journal.

    The job runs again on the delivery engine (:mod:`dicomproxy.relay.engine`) with "leave out
    what is confirmed": its spool files first, the rest fetched again at IMAGE level from the
    archive(s) recorded on the job and streamed on as they arrive (``clients``: a serving
    process's archive clients, needed for C-MOVE archives). A job killed before its request was
    resolved is resolved again first (``resolver``: the exam view). Raises LookupError for an
    unknown job, ValueError for a job that cannot be retried.
    """
    stream_datasets_to_files()  # files in and out as files, as in `serve` (a CLI process has not done it)
    row, peer = check_retryable(config, journal, job_id)
    row = _resolve_again(config, journal, row, resolver)
    result = RetryResult(job_id)
    archive_clients, plan_error = _clients_for(config, row, clients)
    finders = archive_clients or {
        a.name: PacsClient(a, config.proxy.ae_title, ReceiveRegistry(config.proxy.ae_title), a.name)
        for a in job_archives(config, row)
    }
    wanted = _wanted(config, journal, row, finders)
    result.unconfirmed = len(wanted)
    uids = {r.sop_instance_uid for r in wanted}
    spooled = _spooled(config, job_id)
    for uid, item in list(spooled.items()):
        if uid not in uids:  # confirmed and journalled just before a crash: the file may go
            Spool.confirmed(item)
            del spooled[uid]
    result.from_spool = len(spooled)
    first = str(row.get("archive") or "pacs").split(",")[0]
    to_fetch = [r for r in wanted if r.sop_instance_uid not in spooled]
    fetch, unreachable = _fetch_list(journal, job_id, to_fetch, archive_clients, first)
    plan_error = f"{unreachable} instance(s) not in the spool; {plan_error}" if unreachable else ""
    state = JobState(job_id, expected={r.sop_instance_uid: r for r in wanted})
    state.completed = confirmed_before = journal.confirmed_count(job_id)
    moved = Moved(int(row.get("bytes_in") or 0), int(row.get("bytes_out") or 0))
    own = engine is None
    engine = engine or Engine(config, journal, PoolKeeper(config.compression.workers), RETRY_PENDING_INTERVAL)
    try:
        final, outcome, error = _run(engine, state, fetch, peer, list(spooled.values()), moved)
    finally:
        if own:
            engine.pools.close()
    left = journal.unconfirmed(job_id) if wanted else []
    left_uids = {r["sop_instance_uid"] for r in left}
    never = left_uids & set(state.missing_uids) | (left_uids - state.processed)
    result.not_found = sorted(never)
    result.failed = sorted(left_uids - never)
    result.refetched = moved.fetched
    result.sent = journal.confirmed_count(job_id) - confirmed_before
    result.outcome = outcome
    result.error = (plan_error or error) if left else ""
    error = result.error or (f"{len(left)} instance(s) still not confirmed" if left else "")
    engine.close(state, final, outcome, error, moved)
    for folder in (config.data_path / "spool").glob(f"job-{job_id:06d}-*"):
        with_suppressed_rmdir(folder)
    LOG.info(
        "job %d: retry %s, %d resent, %d still unconfirmed", job_id, result.outcome, result.sent, len(left)
    )
    return result


#: How often a retry's transfer looks at its spool when nothing arrives (no requester waits).
RETRY_PENDING_INTERVAL = 1.0


def _run(
    engine: Engine,
    state: JobState,
    fetch: Fetch,
    peer: PeerConfig,
    held: list[SpooledInstance],
    moved: Moved,
) -> tuple[RetrieveResponse, JobOutcome, str]:
    """The retry's transfer on the engine, driven to its end (no requester reads the Pending
    responses); nothing to resend: the counts decide."""
    if not state.expected:
        return state.final(None, "", nothing_sent=False)
    known = (r.sop_class_uid for r in state.expected.values() if r.sop_class_uid)
    classes = sorted({*known, *(i.sop_class_uid for i in held)})
    lanes = engine.config.onward_associations(peer)
    opener = destination_opener(engine.config, peer, None, engine.pull_throttle(peer))
    coercer = retry_coercer(engine.config, engine.journal, state.job_id, peer.ae_title)
    transfer = Transfer(state, fetch, classes, opener, lanes=lanes, held=held, coercer=coercer)
    return engine.run_to_end(transfer, moved)


def with_suppressed_rmdir(folder: Path) -> None:
    """Remove ``folder`` if empty (unconfirmed files stay for another retry)."""
    with contextlib.suppress(OSError):
        folder.rmdir()
