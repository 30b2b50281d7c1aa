"""What a destination that push does not deliver to gets after a rejection note (IOCM;
docs/identity.md): the new study of an *exam re-linked*, the new object of a *report revised*.

A ``[push] destinations`` peer of a node with ``[push] enabled`` gets both from push (the changed
row is queued again; its files are sent with it). Any other destination — a cloud that retrieves
by C-MOVE/C-GET — got the old study or object on request, and nothing would ever give it the new
one, so the correction sends it: the relay's push job of the new study (visibility checked again,
the view's identity, what the destination holds left out) or the order/report object made from the
view's file now (as C-MOVE/C-GET and push make it), journalled as the correction's jobs.
"""

from __future__ import annotations

import logging
from typing import Any

from dicomproxy.config import Config
from dicomproxy.corrections.objects import send_datasets
from dicomproxy.corrections.record import pushed_to
from dicomproxy.corrections.revisions import current_objects
from dicomproxy.corrections.schema import OBJECTS, RELINKED
from dicomproxy.corrections.store import CorrectionStore, Row
from dicomproxy.identity import identity_of
from dicomproxy.identity.coerce import apply_changes, plan_changes
from dicomproxy.relay.identities import coerces
from dicomproxy.relay.journal import Journal
from dicomproxy.reports.encode import role_of_series
from dicomproxy.status import JobOutcome
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.corrections")


class FollowUps:
    """Sends the new study or object after a note, toward destinations push does not serve."""

    def __init__(
        self, config: Config, view: Any, journal: Journal, relay: Any, store: CorrectionStore
    ) -> None:
        self.config = config
        self.view = view
        self.journal = journal
        self.relay = relay
        self.store = store

    def new_study(self, row: Row) -> str:
        """The re-linked exam's study, what the destination does not hold yet; an error or ""."""
        study = row.relinked_to
        if not study or pushed_to(self.config, row.destination):
            return ""
        held = self.journal.confirmed_by_study(row.destination, [study]).get(study, frozenset())
        throttle = self.relay.engine.bandwidth.throttle(row.destination)  # [[bandwidth]]
        job: dict[str, int] = {}

        def started(job_id: int) -> None:
            job["id"] = job_id
            self.store.add_job(row.id, job_id, RELINKED)

        for _ in self.relay.push(study, row.destination, exclude=held, on_start=started, throttle=throttle):
            pass
        found = self.journal.get(job["id"]) if "id" in job else None
        outcome = str(found.row.get("outcome", "")) if found is not None else ""
        if outcome not in (JobOutcome.SUCCESS.value, JobOutcome.EMPTY.value):  # empty: hidden, or held
            return f"the re-linked study was not delivered ({outcome or 'not started'})"
        return ""

    def new_object(self, row: Row) -> str:
        """The current object of the revised role, unless the destination holds it; an error or ""."""
        if pushed_to(self.config, row.destination) or not self.config.reports.enabled:
            return ""
        rows = self.view.study_rows([row.study_uid]).get(row.study_uid, [])
        if not rows:
            return ""  # no longer visible: never sent
        held = self.store.held_objects([row.study_uid]).get((row.destination, row.study_uid), {})
        role = self._role(row)
        obj = current_objects(self.config, row.study_uid, rows, row.destination).get(role)
        if obj is None:
            return f"the {role} file is not available"
        if obj.sop_instance_uid in held.get(role, set()):
            return ""
        ds = obj.dataset
        if coerces(self.config, row.destination):  # the issuers' sequences, as every route adds them
            style = name_style_for(self.config, row.destination)
            identity = identity_of(row.study_uid, rows, style, self.config.hospital)
            apply_changes(ds, plan_changes(ds, identity), system=self.config.proxy.ae_title, source="")
        else:
            identity = None

        def started(job_id: int) -> None:
            self.store.add_job(row.id, job_id, OBJECTS)
            self.store.record_objects(
                job_id,
                row.study_uid,
                [(role, obj.sop_instance_uid, obj.sop_class_uid, str(ds.SeriesInstanceUID))],
            )
            if identity is not None:
                self.journal.record_identities(job_id, row.destination, [identity])

        ok = send_datasets(
            self.config, self.journal, self.relay, row.destination, row.study_uid, [ds], started
        )
        return "" if ok else f"the revised {role} object was not confirmed"

    def _role(self, row: Row) -> str:
        """The superseded object's role (``order`` | ``report``: its series says which)."""
        obj = self.store.object_delivery(row.destination, row.study_uid, row.object_uid)[1]
        return (role_of_series(row.study_uid, obj.series_uid) or "") if obj is not None else ""
