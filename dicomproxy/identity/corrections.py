"""Corrections after delivery (IHE RAD IOCM; issue 26 item 2; docs/identity.md): pure decisions.

A study went out carrying the identity the view gave it then (``job_identities``); the view's row
may since have changed. :func:`decide` compares the two and names the correction:

- :attr:`Kind.IDENTITY` — a patient or accession identifier changed: the delivered instances are
  rejected with (113038, DCM, "Incorrect Modality Worklist Entry") and sent again corrected, under
  new SOP Instance UIDs (:func:`corrected_uid`);
- :attr:`Kind.RELINKED` — the exam's row now names another Study Instance UID: what went out under
  the old one is rejected with the same code (the new study is pushed as any new row is);
- :attr:`Kind.WITHDRAWN` — the study has no visible row (privacy above ``max_privacy``, another
  HospitalID, row deleted, UID cleared): everything delivered is rejected with (113037, DCM,
  "Rejected for Patient Safety Reasons"), and nothing is sent again;
- :attr:`Kind.REPORT` — an order/report file's bytes changed: push sent the new object (its SOP
  Instance UID derives from the bytes), the superseded one is rejected with (113001, DCM,
  "Rejected for Quality Reasons") (:func:`revised`).

The Document Titles are from PS3.16 CID 7011 (Rejected for Quality Reasons, Patient Safety,
Incorrect Modality Worklist Entry, Data Retention Policy Expired), as IHE RAD IOCM uses them.

An empty view cell never counts as a change (coercion never erases a value either,
:mod:`dicomproxy.identity.coerce`); the Institution Name is not an identifier (a hospital renamed is
not a wrong patient) and does not count.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from dicomproxy.identity.model import Identity

#: Identity fields whose change makes a correction (attribute names of :class:`Identity`): those
#: the view's row gives. The issuers' OIDs come from ``[hospital] issuers`` (configuration): editing
#: that table is not a correction of every study ever delivered.
IDENTIFYING = (
    "patient_id",
    "issuer",
    "patient_name",
    "birth_date",
    "sex",
    "accession",
)


class Kind(str, Enum):
    """What happened to a delivered study in the view."""

    IDENTITY = "identity-corrected"
    RELINKED = "exam-relinked"
    WITHDRAWN = "row-withdrawn"
    REPORT = "report-revised"


@dataclass(frozen=True)
class Title:
    """A Key Object Selection Document Title from PS3.16 CID 7011 (coding scheme DCM)."""

    value: str
    meaning: str
    scheme: str = "DCM"


QUALITY = Title("113001", "Rejected for Quality Reasons")
INCORRECT_WORKLIST_ENTRY = Title("113038", "Incorrect Modality Worklist Entry")
PATIENT_SAFETY = Title("113037", "Rejected for Patient Safety Reasons")

#: The rejection note's title for each kind (docs/identity.md says why).
TITLES = {
    Kind.IDENTITY: INCORRECT_WORKLIST_ENTRY,
    Kind.RELINKED: INCORRECT_WORKLIST_ENTRY,
    Kind.WITHDRAWN: PATIENT_SAFETY,
    Kind.REPORT: QUALITY,
}


@dataclass(frozen=True)
class Correction:
    """One correction of one delivered identity of one study (no patient data: field names only)."""

    kind: Kind
    study_uid: str
    old_digest: str
    #: The identity's digest now ("" when withdrawn or re-linked: nothing is sent again).
    new_digest: str
    #: The :data:`IDENTIFYING` fields that changed (empty when withdrawn or re-linked).
    changed: tuple[str, ...] = ()
    #: The Study Instance UID the exam now has (re-linked only).
    relinked_to: str = ""

    @property
    def fingerprint(self) -> str:
        """What identifies this correction everywhere (journal key, derived UIDs): 32 hex digits."""
        text = "|".join((self.kind.value, self.study_uid, self.old_digest, self.new_digest, self.relinked_to))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    @property
    def title(self) -> Title:
        return TITLES[self.kind]

    @property
    def resends(self) -> bool:
        """Corrected copies follow the rejection note (identity corrected only)."""
        return self.kind is Kind.IDENTITY


def changed_fields(old: Identity, new: Identity) -> tuple[str, ...]:
    """The :data:`IDENTIFYING` fields whose new value is not empty and differs from the old (a
    name by :func:`name_key`: a peer's ``name_style`` changed is not a correction)."""
    changed = []
    for name in IDENTIFYING:
        was, now = getattr(old, name), getattr(new, name)
        if name == "patient_name":
            was, now = name_key(was), name_key(now)
        if now not in (None, "") and now != was:
            changed.append(name)
    return tuple(changed)


def name_key(pn: str) -> str:
    """What a Person Name says whatever the style it is written in (``=王小东``, ``王小东``,
    ``Wang^Xiaodong=王小东``): its ideographic component when it has one — the view's own text,
    which the pinyin is made from — else its first (PS3.5 6.2.1.2)."""
    groups = [g.strip() for g in pn.split("=")]
    ideographic = groups[1] if len(groups) > 1 else ""
    if ideographic:
        return ideographic.rstrip("^")
    first = groups[0].rstrip("^")
    return first


def decide(old: Identity, new: Identity | None, relinked_to: str = "") -> Correction | None:
    """The correction the view's current identity ``new`` of ``old.study_uid`` (None: no visible
    row) calls for, toward a destination that holds instances with ``old``; None = nothing.
    ``relinked_to``: the Study Instance UID the exam's row now names, when it names another."""
    if new is None:
        if relinked_to and relinked_to != old.study_uid:
            return Correction(Kind.RELINKED, old.study_uid, old.digest, "", relinked_to=relinked_to)
        return Correction(Kind.WITHDRAWN, old.study_uid, old.digest, "")
    if new.study_uid != old.study_uid:
        raise ValueError(f"identities of two studies compared: {old.study_uid} and {new.study_uid}")
    changed = changed_fields(old, new)
    if not changed:
        return None
    return Correction(Kind.IDENTITY, old.study_uid, old.digest, new.digest, changed)


def revised(study_uid: str, role: str, old_uid: str, new_uid: str) -> Correction | None:
    """The correction of the ``role`` object ``old_uid`` a destination holds, superseded by
    ``new_uid`` (None: the same object). Its "digests" are the objects' own: one correction per
    superseded object and destination."""
    if old_uid == new_uid:
        return None
    return Correction(
        Kind.REPORT,
        study_uid,
        _object_digest(role, old_uid),
        _object_digest(role, new_uid),
        (role,),
    )


def _object_digest(role: str, uid: str) -> str:
    """A made object's stand-in for an identity digest (64 hex digits, as those are)."""
    return hashlib.sha256(f"object|{role}|{uid}".encode()).hexdigest()


def corrected_uid(old_uid: str, fingerprint: str) -> str:
    """The SOP Instance UID of the corrected copy of ``old_uid`` (PS3.5 B.2: ``2.25.`` + a UUID
    made from a SHA-256 of both): the same on every node and every run, so a repeat is the same
    instance at the destination."""
    digest = hashlib.sha256(f"{old_uid}|{fingerprint}".encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def held_as_listed(
    listed: Collection[str], held: Collection[str], fingerprints: Collection[str]
) -> frozenset[str]:
    """What a destination holds, in the PACS's UIDs: a corrected copy (held under
    :func:`corrected_uid` of a listed UID and one of the study's identity corrections) counts as
    its PACS instance — ``reconcile`` must not call a copy "extra", nor its rejected original
    "missing" (a fix would send the rejected instance again)."""
    if not fingerprints:
        return frozenset(held)
    copies = {corrected_uid(p, f): p for p in listed for f in fingerprints}
    return frozenset(copies.get(uid, uid) for uid in held)


def note_uid(study_uid: str, fingerprint: str, destination: str) -> str:
    """The SOP Instance UID of the rejection note of one correction at one destination."""
    digest = hashlib.sha256(f"kos|{study_uid}|{fingerprint}|{destination}".encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def note_series_uid(study_uid: str) -> str:
    """The series our rejection notes of ``study_uid`` go into (one per study, on every node)."""
    digest = hashlib.sha256(f"kos-series|{study_uid}".encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


__all__ = [
    "IDENTIFYING",
    "INCORRECT_WORKLIST_ENTRY",
    "PATIENT_SAFETY",
    "QUALITY",
    "TITLES",
    "Correction",
    "Kind",
    "Title",
    "changed_fields",
    "corrected_uid",
    "decide",
    "held_as_listed",
    "name_key",
    "note_series_uid",
    "note_uid",
    "revised",
]
