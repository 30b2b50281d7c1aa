"""What the destinations hold and with which identity, read from the journal for corrections
after delivery (IOCM; docs/identity.md): a part of
:class:`~dicomproxy.corrections.store.CorrectionStore`. The exams and order/report objects of the
deliveries are the relay journal's records (:mod:`dicomproxy.relay.delivered`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from dicomproxy.corrections.schema import COPIES, correction_jobs, corrections
from dicomproxy.identity import Identity
from dicomproxy.identity.corrections import corrected_uid
from dicomproxy.identity.rejection import Delivered
from dicomproxy.relay.delivered import DeliveryRecords, delivered_objects
from dicomproxy.relay.journal import CONFIRMED_STATES, job_expected, job_identities, job_instances, jobs


class DeliveredQueries(DeliveryRecords):
    """Deliveries, their instances and the order/report objects (mixed into the store)."""

    engine: Engine

    # --- what was delivered ----------------------------------------------------------------------

    def delivered_studies(self, since: dt.datetime | None = None) -> list[str]:
        """The studies some delivery recorded an identity for (the sweep's list): those recorded
        at or after ``since`` (naive UTC), every one when None."""
        t = job_identities
        q = select(t.c.study_uid).distinct().order_by(t.c.study_uid)
        if since is not None:
            q = q.where(t.c.recorded >= since)
        with self.engine.connect() as conn:
            return [str(u) for u in conn.execute(q).scalars()]

    def deliveries(self, study_uids: Collection[str]) -> dict[tuple[str, str], dict[str, Identity]]:
        """(destination, study) → digest → identity, of the deliveries of ``study_uids`` that
        the destination confirmed at least one instance of."""
        t, i = job_identities, job_instances
        found: dict[tuple[str, str], dict[str, Identity]] = {}
        uids = sorted(set(study_uids))
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                confirmed = (
                    select(i.c.id).where(i.c.job_id == t.c.job_id, i.c.state.in_(CONFIRMED_STATES)).exists()
                )
                q = select(t.c.destination, t.c.study_uid, t.c.digest, t.c.identity).where(
                    t.c.study_uid.in_(uids[start : start + 500]), confirmed
                )
                for dest, study, digest, text in conn.execute(q):
                    found.setdefault((str(dest), str(study)), {})[str(digest)] = Identity.from_json(text)
        return found

    def delivered_instances(
        self, destination: str, study_uid: str, digest: str, objects: bool = False
    ) -> list[tuple[str, Delivered]]:
        """(the PACS's SOP Instance UID, the instance the destination holds) of the instances of
        ``study_uid`` that ``destination`` confirmed from jobs that gave them identity ``digest``
        (their series from the PACS's announcement, ``job_expected``); the corrected copies of an
        earlier correction are held under their own UIDs. ``objects``: the order/report objects
        push made and sent with them too (``delivered_objects``)."""
        t, i, e, cj = job_identities, job_instances, job_expected, correction_jobs
        q = (
            select(i.c.job_id, i.c.sop_class_uid, e.c.series_uid, i.c.sop_instance_uid)
            .select_from(
                t.join(i, i.c.job_id == t.c.job_id).join(
                    e, and_(e.c.job_id == i.c.job_id, e.c.sop_instance_uid == i.c.sop_instance_uid)
                )
            )
            .where(
                t.c.destination == destination,
                t.c.study_uid == study_uid,
                t.c.digest == digest,
                e.c.study_uid == study_uid,
                i.c.state.in_(CONFIRMED_STATES),
                ~_is_object(i.c.job_id, i.c.sop_instance_uid),  # a C-MOVE's report: below, with ``objects``
            )
        )
        copies = (
            select(cj.c.job_id, corrections.c.fingerprint)
            .join(corrections, corrections.c.id == cj.c.correction_id)
            .where(cj.c.role == COPIES)
        )
        d = delivered_objects
        made = (
            select(i.c.job_id, i.c.sop_class_uid, d.c.series_uid, i.c.sop_instance_uid)
            .select_from(
                t.join(i, i.c.job_id == t.c.job_id).join(
                    d, and_(d.c.job_id == i.c.job_id, d.c.sop_instance_uid == i.c.sop_instance_uid)
                )
            )
            .where(
                t.c.destination == destination,
                t.c.study_uid == study_uid,
                t.c.digest == digest,
                d.c.study_uid == study_uid,
                i.c.state.in_(CONFIRMED_STATES),
            )
        )
        with self.engine.connect() as conn:
            renamed = {int(j): str(f) for j, f in conn.execute(copies)}
            rows = [*conn.execute(q).all(), *(conn.execute(made).all() if objects else [])]
        out: dict[str, tuple[str, Delivered]] = {}
        for job_id, sop_class, series, uid in rows:
            fingerprint = renamed.get(int(job_id))
            sop = corrected_uid(str(uid), fingerprint) if fingerprint else str(uid)
            out[sop] = (str(uid), Delivered(str(sop_class), str(series), sop))
        return sorted(out.values(), key=lambda p: (p[1].series_uid, p[1].sop_instance_uid))

    def corrected(self, destination: str, study_uid: str) -> set[str]:
        """The delivered identities (digests) of a study already corrected at ``destination``."""
        c = corrections
        q = select(c.c.old_digest).where(c.c.destination == destination, c.c.study_uid == study_uid)
        with self.engine.connect() as conn:
            return {str(d) for d in conn.execute(q).scalars()}

    def copied(self, destination: str, study_uids: Collection[str]) -> dict[str, list[str]]:
        """Study → fingerprints of its identity corrections whose copies went to ``destination``."""
        c, cj = corrections, correction_jobs
        q = (
            select(c.c.study_uid, c.c.fingerprint)
            .where(c.c.destination == destination, c.c.study_uid.in_(list(study_uids)))
            .where(select(cj.c.job_id).where(cj.c.correction_id == c.c.id, cj.c.role == COPIES).exists())
            .distinct()
        )
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for study, fingerprint in conn.execute(q):
                out.setdefault(str(study), []).append(str(fingerprint))
        return out

    # --- order/report objects (report revised) ---------------------------------------------------

    def held_objects(self, study_uids: Collection[str]) -> dict[tuple[str, str], dict[str, set[str]]]:
        """(destination, study) → role → the order/report objects of ``study_uids`` it confirmed,
        by any route (C-MOVE/C-GET with ``[reports] in_retrieve``, push, a correction)."""
        t, i = delivered_objects, job_instances
        uids = sorted(set(study_uids))
        out: dict[tuple[str, str], dict[str, set[str]]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                q = (
                    select(jobs.c.destination, t.c.study_uid, t.c.role, t.c.sop_instance_uid)
                    .join(i, and_(i.c.job_id == t.c.job_id, i.c.sop_instance_uid == t.c.sop_instance_uid))
                    .join(jobs, jobs.c.id == t.c.job_id)
                    .where(t.c.study_uid.in_(uids[start : start + 500]), i.c.state.in_(CONFIRMED_STATES))
                    .distinct()
                )
                for dest, study, role, uid in conn.execute(q):
                    out.setdefault((str(dest), str(study)), {}).setdefault(str(role), set()).add(str(uid))
        return out

    def superseded(self, destination: str, study_uid: str, role: str, current: str) -> list[str]:
        """The ``role`` objects of ``study_uid`` that ``destination`` confirmed, other than ``current``."""
        t, i = delivered_objects, job_instances
        q = (
            select(t.c.sop_instance_uid)
            .join(i, and_(i.c.job_id == t.c.job_id, i.c.sop_instance_uid == t.c.sop_instance_uid))
            .join(jobs, jobs.c.id == t.c.job_id)
            .where(
                t.c.study_uid == study_uid,
                t.c.role == role,
                t.c.sop_instance_uid != current,
                jobs.c.destination == destination,
                i.c.state.in_(CONFIRMED_STATES),
            )
            .distinct()
        )
        with self.engine.connect() as conn:
            return sorted(str(u) for u in conn.execute(q).scalars())

    def object_delivery(
        self, destination: str, study_uid: str, sop_uid: str
    ) -> tuple[Identity | None, Delivered | None]:
        """The identity an order/report object went out with to ``destination``, and the object."""
        t, ji = delivered_objects, job_identities
        q = (
            select(t.c.sop_class_uid, t.c.series_uid, ji.c.identity)
            .select_from(
                t.outerjoin(
                    ji,
                    and_(
                        ji.c.job_id == t.c.job_id,
                        ji.c.destination == destination,
                        ji.c.study_uid == study_uid,
                    ),
                )
            )
            .where(t.c.study_uid == study_uid, t.c.sop_instance_uid == sop_uid)
            .order_by(t.c.job_id)
        )
        with self.engine.connect() as conn:
            found = conn.execute(q).first()
        if found is None:
            return None, None
        identity = Identity.from_json(found.identity) if found.identity else None
        return identity, Delivered(str(found.sop_class_uid), str(found.series_uid), sop_uid)


def _is_object(job_id: Any, sop_uid: Any) -> Any:
    """Whether the job's instance is an order/report object it made (``delivered_objects``)."""
    d = delivered_objects
    return select(d.c.job_id).where(d.c.job_id == job_id, d.c.sop_instance_uid == sop_uid).exists()
