"""Corrections after delivery, carried out toward ``iocm = true`` destinations (IHE RAD IOCM;
docs/identity.md).

A claimed ``corrections`` row (:class:`~dicomproxy.corrections.store.CorrectionStore`):

1. **the rejection note** — a Key Object Selection Document (:mod:`dicomproxy.identity.rejection`)
   with the correction's CID 7011 title, carrying the identity the instances were delivered with
   and referencing exactly the instances the destination confirmed under it (the journal's
   ``job_instances`` of the jobs whose ``job_identities`` record has that digest). Sent as the
   push item's files are (:mod:`dicomproxy.push.files`): a transfer of its own on the relay's
   engine, journalled as a job (its instance row is the note);
2. **the corrected copies** (identity corrected only) — the relay's own push job for the study
   (visibility checked again: a study the view hides is never sent), each instance given the
   view's identity and its corrected SOP Instance UID (:class:`~dicomproxy.identity.copies.
   CorrectedCopies`); the instances this correction's copy jobs confirmed are not sent again, nor
   those the destination holds with another identity;
3. toward a destination push does not deliver to, **the new study** of a re-linked exam or **the
   new object** of a revised report (:mod:`dicomproxy.corrections.followups`).

Each step is recorded before the next one (note UID, copy jobs), so a node that died mid-way is
replaced by one that resumes where it stopped; UIDs are derived from the correction, so a step
done twice sends the same instances again, never new ones.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.corrections.followups import FollowUps
from dicomproxy.corrections.objects import corrected_objects, send_datasets
from dicomproxy.corrections.store import (
    COPIES,
    DONE,
    DUE,
    FAILED,
    NOTE,
    OBJECTS,
    CorrectionStore,
    Row,
)
from dicomproxy.identity import Coercer, Identity, identity_of
from dicomproxy.identity.copies import CorrectedCopies
from dicomproxy.identity.corrections import TITLES, Kind, note_series_uid, note_uid
from dicomproxy.identity.rejection import rejection_note
from dicomproxy.relay.identities import coerces
from dicomproxy.relay.journal import Journal
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.status import JobOutcome
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.corrections")

#: Attempts before a correction is ``failed`` (then `dicomproxy reconcile` lists it).
MAX_ATTEMPTS = 10


class CorrectionSender:
    """Carries out claimed corrections on the relay's engine."""

    def __init__(
        self, config: Config, view: Any, journal: Journal, relay: Any, store: CorrectionStore
    ) -> None:
        self.config = config
        #: The exam view: the rows the order/report objects are made again from.
        self.view = view
        self.journal = journal
        #: The relay (:class:`~dicomproxy.relay.plan.RelayService`): its engine and push jobs.
        self.relay = relay
        self.store = store
        #: The new study / object toward a destination push does not deliver to.
        self.followups = FollowUps(config, view, journal, relay, store)

    def run(self, row: Row) -> str:
        """Carry out ``row`` (claimed by this node); its new state."""
        try:
            referenced, note = self._note(row)
            if note is None:
                return self._again(row, "the rejection note was not confirmed")
            copies, error = 0, ""
            if row.kind == Kind.IDENTITY.value and coerces(self.config, row.destination):
                copies, error = self._copies(row)
            elif row.kind == Kind.RELINKED.value:
                error = self.followups.new_study(row)
            elif row.kind == Kind.REPORT.value:
                error = self.followups.new_object(row)
            if error:
                return self._again(row, error)
        except Exception as exc:  # the journal, the view: tried again later
            LOG.exception("correction %d: failed unexpectedly", row.id)
            return self._again(row, f"internal error: {exc}")
        self.store.finish(row.id, DONE, referenced=referenced, copies=copies, error="")
        LOG.info(
            "correction %d: study %s at %s: %s, rejection note %s (%d instance(s))%s",
            row.id,
            row.study_uid,
            row.destination,
            row.kind,
            note or "not needed",
            referenced,
            f", {copies} corrected cop(ies)" if row.kind == Kind.IDENTITY.value else "",
        )
        self._publish(row, DONE, referenced, copies, note or "")
        return DONE

    def _again(self, row: Row, reason: str) -> str:
        state = FAILED if row.attempts >= MAX_ATTEMPTS else DUE
        delay = min(3600.0, 10.0 * 2 ** max(0, row.attempts - 1))
        self.store.finish(
            row.id,
            state,
            error=reason[:2000],
            next_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(seconds=delay),
            owner="",
        )
        LOG.warning(
            "correction %d: study %s at %s: %s (%s)", row.id, row.study_uid, row.destination, reason, state
        )
        self._publish(row, FAILED if state == FAILED else "retry", 0, 0, "")
        return state

    def _identity(self, row: Row) -> Identity | None:
        """The identity the corrected instances were delivered with."""
        if row.kind == Kind.REPORT.value:
            return self.store.object_delivery(row.destination, row.study_uid, row.object_uid)[0]
        deliveries = self.store.deliveries([row.study_uid]).get((row.destination, row.study_uid), {})
        return deliveries.get(row.old_digest)

    def _publish(self, row: Row, outcome: str, referenced: int, copies: int, note: str) -> None:
        old = self._identity(row)
        events.publish(
            events.CorrectionSent(
                row.destination,
                row.study_uid,
                row.kind,
                outcome,
                referenced,
                copies,
                note,
                old.patient_id if old is not None else "",
            )
        )

    # --- 1. the rejection note -------------------------------------------------------------------

    def _note(self, row: Row) -> tuple[int, str | None]:
        """(instances referenced, the note's UID; None = not confirmed); "" when nothing to reject."""
        old: Identity | None
        if row.kind == Kind.REPORT.value:  # the superseded object only
            old, obj = self.store.object_delivery(row.destination, row.study_uid, row.object_uid)
            delivered = [(row.object_uid, obj)] if obj is not None else []
        else:
            # the order/report objects push made go too (an identity correction makes them again)
            delivered = self.store.delivered_instances(
                row.destination, row.study_uid, row.old_digest, objects=True
            )
            old = self._identity(row)
        if not delivered or old is None:
            return 0, ""
        if row.note_uid:
            return len(delivered), row.note_uid  # sent by an earlier attempt
        uid = note_uid(row.study_uid, row.fingerprint, row.destination)
        note = rejection_note(
            old,
            [d for _, d in delivered],
            TITLES[Kind(row.kind)],
            sop_instance_uid=uid,
            series_uid=note_series_uid(row.study_uid),
            manufacturer="dicomproxy",
            description=f"dicomproxy: {row.kind}",
        )
        if not self._send_note(row, note):
            return len(delivered), None
        self.store.update(row.id, note_uid=uid, referenced=len(delivered))
        return len(delivered), uid

    def _send_note(self, row: Row, note: Any) -> bool:
        return send_datasets(
            self.config,
            self.journal,
            self.relay,
            row.destination,
            row.study_uid,
            [note],
            lambda job_id: self.store.add_job(row.id, job_id, NOTE),
        )

    # --- 2. the corrected copies -----------------------------------------------------------------

    def _copies(self, row: Row) -> tuple[int, str]:
        """Send the corrected copies of the images, then of the order/report objects push made;
        (confirmed copies, error or "")."""
        images, error = self._image_copies(row)
        if error:
            return images, error
        made, error = self._object_copies(row)
        return images + made, error

    def _object_copies(self, row: Row) -> tuple[int, str]:
        """The order/report objects delivered with the old identity, made again from the view's
        files (their corrected UIDs); (confirmed, error or "")."""
        if not self.config.reports.enabled:
            return 0, ""
        every = self.store.delivered_instances(row.destination, row.study_uid, row.old_digest, objects=True)
        images = self.store.delivered_instances(row.destination, row.study_uid, row.old_digest)
        if len(every) == len(images):
            return 0, ""  # none was delivered with it
        try:
            made = corrected_objects(self.config, self.view, row.study_uid, row.destination, row.fingerprint)
        except ReportUnavailable as exc:
            return 0, f"an order/report file is not available: {exc}"
        sent = self.store.confirmed_of_jobs(self.store.jobs_of(row.id, OBJECTS))
        todo = [(role, ds) for role, ds in made if str(ds.SOPInstanceUID) not in sent]
        if not todo:
            return len(made), ""
        identity = self._current(row)

        def started(job_id: int) -> None:
            self.store.add_job(row.id, job_id, OBJECTS)
            objects = [
                (r, str(d.SOPInstanceUID), str(d.SOPClassUID), str(d.SeriesInstanceUID)) for r, d in todo
            ]
            self.store.record_objects(job_id, row.study_uid, objects)
            if identity is not None:  # what a later correction compares with
                self.journal.record_identities(job_id, row.destination, [identity])

        ok = send_datasets(
            self.config,
            self.journal,
            self.relay,
            row.destination,
            row.study_uid,
            [d for _, d in todo],
            started,
        )
        if not ok:
            return 0, "the corrected order/report objects were not all confirmed"
        return len(made), ""

    def _current(self, row: Row) -> Identity | None:
        """The view's identity of the study now, as the destination gets it."""
        rows = self.view.study_rows([row.study_uid]).get(row.study_uid, [])
        if not rows:
            return None
        style = name_style_for(self.config, row.destination)
        return identity_of(row.study_uid, rows, style, self.config.hospital)

    def _image_copies(self, row: Row) -> tuple[int, str]:
        """The images' corrected copies: the relay's push job; (confirmed, error or "")."""
        delivered = {
            pacs for pacs, _ in self.store.delivered_instances(row.destination, row.study_uid, row.old_digest)
        }
        done_jobs = self.store.jobs_of(row.id, COPIES)
        confirmed = self.store.confirmed_of_jobs(done_jobs)
        held = self.journal.confirmed_by_study(row.destination, [row.study_uid]).get(
            row.study_uid, frozenset()
        )
        exclude = frozenset((held - delivered) | confirmed)
        if delivered <= confirmed:
            return len(confirmed & delivered), ""

        def started(job_id: int) -> None:
            self.store.add_job(row.id, job_id, COPIES)

        def wrap(coercer: Coercer | None) -> Coercer | None:
            return CorrectedCopies(coercer, row.fingerprint) if coercer is not None else None

        final = None
        throttle = self.relay.engine.bandwidth.throttle(row.destination)  # [[bandwidth]], as push's
        for response in self.relay.push(
            row.study_uid, row.destination, exclude=exclude, on_start=started, wrap=wrap, throttle=throttle
        ):
            final = response
        jobs = self.store.jobs_of(row.id, COPIES)
        last = self.journal.get(jobs[-1]) if jobs else None
        if last is not None and last.row.get("outcome") == JobOutcome.EMPTY.value:
            LOG.warning(
                "correction %d: study %s is no longer visible: no corrected copies", row.id, row.study_uid
            )
            return 0, ""
        confirmed = self.store.confirmed_of_jobs(self.store.jobs_of(row.id, COPIES))
        missing = delivered - confirmed
        if missing:
            status = f"0x{int(final.status):04X}" if final is not None else "none"
            return len(
                confirmed & delivered
            ), f"{len(missing)} corrected cop(ies) not confirmed (status {status})"
        return len(confirmed & delivered), ""
