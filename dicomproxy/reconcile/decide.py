"""What one study is at one destination, from three sets of SOP Instance UIDs (pure; no I/O).

The inputs, for one Study Instance UID (0020,000D) and one destination AE:

- ``pacs``: the SOP Instance UIDs (0008,0018) the archive lists for the study (IMAGE-level C-FIND,
  PS3.4 C.6.2.1); None when the archive could not be asked;
- ``journal``: those our journal records as confirmed by the destination (C-STORE success or
  warning, PS3.4 B.2.3; ``job_instances`` in ``CONFIRMED_STATES``), our own order/report objects
  included;
- ``held``: those the destination lists for the study when it answers C-FIND (a Q/R SCP); None
  when it cannot be asked — then the journal stands in for it (``basis`` says which);
- ``uncommitted``: those stored and asked to be committed by Storage Commitment (PS3.4 Annex J)
  whose newest reference is not committed (pending, failed, unanswered: the journal's
  :meth:`~dicomproxy.relay.journal.JobQueries.uncommitted_by_study`).

The UIDs of ``pacs ∪ journal ∪ held`` fall into exactly one of: ``present`` (in the PACS and at
the destination), ``missing`` (in the PACS, not at the destination), ``extra`` (at the destination,
neither in the PACS nor sent by us), ``ours`` (sent by us, not in the PACS: the order/report objects
made from the view's files, or an instance deleted from the PACS after delivery). ``lost`` ⊆
``missing``: the journal says confirmed, the destination no longer holds them (deleted there).
"""

from __future__ import annotations

import enum
from collections.abc import Set
from dataclasses import dataclass


class Category(str, enum.Enum):
    """One word per study and destination (the report's ``category`` column)."""

    COMPLETE = "complete"
    #: In the PACS, not at the destination (the SOP Instance UIDs are listed).
    MISSING = "missing"
    #: Held at the destination, neither in the PACS nor sent by us.
    EXTRA = "extra"
    #: The PACS lists no instance of the study (yet: images still arriving, or routed elsewhere).
    NOT_IN_PACS = "not-in-pacs"
    #: Stored at the destination but not committed (Storage Commitment, PS3.4 Annex J).
    UNCOMMITTED = "stored-not-committed"
    #: The PACS could not be asked.
    UNKNOWN = "unknown"


#: ``Verdict.basis``: what "at the destination" was taken from.
DESTINATION, JOURNAL = "destination", "journal"


@dataclass(frozen=True)
class Verdict:
    """One study at one destination."""

    category: Category
    #: :data:`DESTINATION` (it answered C-FIND) or :data:`JOURNAL` (it could not be asked).
    basis: str
    pacs: frozenset[str]
    present: frozenset[str]
    missing: frozenset[str]
    #: Of ``missing``: confirmed in the journal, yet no longer held (deleted at the destination).
    lost: frozenset[str]
    extra: frozenset[str]
    ours: frozenset[str]
    uncommitted: frozenset[str]


def decide(
    pacs: Set[str] | None,
    journal: Set[str],
    held: Set[str] | None,
    uncommitted: Set[str] = frozenset(),
) -> Verdict:
    """The category of one study at one destination, and the UIDs behind it (module docstring).

    Precedence when several apply: unknown, not-in-PACS, missing, stored-not-committed, extra,
    complete — the first names what an operator has to act on first."""
    basis = JOURNAL if held is None else DESTINATION
    confirmed = frozenset(journal)
    if pacs is None:
        empty: frozenset[str] = frozenset()
        return Verdict(Category.UNKNOWN, basis, empty, empty, empty, empty, empty, empty, empty)
    listed = frozenset(pacs)
    there = confirmed if held is None else frozenset(held)
    present = listed & there
    missing = listed - there
    extra = (there - listed - confirmed) if held is not None else frozenset()
    ours = confirmed - listed
    waiting = frozenset(uncommitted) & present
    if not listed:
        category = Category.NOT_IN_PACS
    elif missing:
        category = Category.MISSING
    elif waiting:
        category = Category.UNCOMMITTED
    elif extra:
        category = Category.EXTRA
    else:
        category = Category.COMPLETE
    return Verdict(category, basis, listed, present, missing, missing & confirmed, extra, ours, waiting)
