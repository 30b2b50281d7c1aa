"""The completeness report's categories (:mod:`dicomproxy.reconcile.decide`), without sockets or a
database: each category, its boundaries and precedence, and properties over random UID sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomproxy.reconcile.decide import DESTINATION, JOURNAL, Category, decide
from dicomproxy.reconcile.run import Pace

A, B, C, D, R = "1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.9"  # R: one of our report objects


def s(*uids: str) -> frozenset[str]:
    return frozenset(uids)


@pytest.mark.parametrize(
    ("pacs", "journal", "held", "uncommitted", "category", "missing", "extra"),
    [
        # complete: every PACS instance at the destination (also when the journal knows none of them)
        (s(A, B), s(A, B), s(A, B), s(), Category.COMPLETE, s(), s()),
        (s(A, B), s(), s(A, B), s(), Category.COMPLETE, s(), s()),
        # missing: exactly the instances the destination lacks, never one it holds
        (s(A, B, C), s(A, B, C), s(A), s(), Category.MISSING, s(B, C), s()),
        (s(A), s(), s(), s(), Category.MISSING, s(A), s()),
        # the destination cannot be asked: the journal stands in for it
        (s(A, B), s(A), None, s(), Category.MISSING, s(B), s()),
        (s(A, B), s(A, B), None, s(), Category.COMPLETE, s(), s()),
        # extra: held at the destination, not in the PACS and not sent by us
        (s(A), s(A), s(A, D), s(), Category.EXTRA, s(), s(D)),
        # our own report object at the destination is not extra
        (s(A), s(A, R), s(A, R), s(), Category.COMPLETE, s(), s()),
        # not yet in the PACS, whatever else is known
        (s(), s(A), s(A), s(), Category.NOT_IN_PACS, s(), s()),
        (s(), s(), None, s(), Category.NOT_IN_PACS, s(), s()),
        # stored, not committed (Storage Commitment pending or unanswered)
        (s(A, B), s(A, B), s(A, B), s(B), Category.UNCOMMITTED, s(), s()),
        # missing wins over uncommitted and extra
        (s(A, B), s(A, B), s(A, D), s(A), Category.MISSING, s(B), s(D)),
        # uncommitted only counts what is present: a missing one is missing
        (s(A, B), s(A, B), s(A, B), s(C), Category.COMPLETE, s(), s()),
    ],
)
def test_categories(
    pacs: frozenset[str],
    journal: frozenset[str],
    held: frozenset[str] | None,
    uncommitted: frozenset[str],
    category: Category,
    missing: frozenset[str],
    extra: frozenset[str],
) -> None:
    verdict = decide(pacs, journal, held, uncommitted)
    assert verdict.category is category
    assert verdict.missing == missing
    assert verdict.extra == extra
    assert verdict.basis == (JOURNAL if held is None else DESTINATION)


def test_the_pacs_not_asked_is_unknown_with_no_uids() -> None:
    verdict = decide(None, s(A), s(A, B))
    assert verdict.category is Category.UNKNOWN
    assert not (verdict.missing | verdict.extra | verdict.present | verdict.lost)


def test_lost_are_the_missing_the_journal_says_were_confirmed() -> None:
    """Deleted at the destination after it confirmed them: what ``--fix`` must make deliverable again."""
    verdict = decide(s(A, B, C), s(A, B), s(A))
    assert verdict.missing == s(B, C)
    assert verdict.lost == s(B)


def test_a_single_missing_instance_is_enough() -> None:
    """The boundary: one UID short of complete."""
    assert decide(s(A, B), s(A, B), s(B)).category is Category.MISSING
    assert decide(s(A, B), s(A, B), s(A, B)).category is Category.COMPLETE


uids = st.frozensets(st.sampled_from([f"1.2.{i}" for i in range(12)]), max_size=12)


@given(uids, uids, st.none() | uids, uids)
def test_the_uids_are_partitioned(
    pacs: frozenset[str], journal: frozenset[str], held: frozenset[str] | None, uncommitted: frozenset[str]
) -> None:
    """Every UID seen is in exactly one of present, missing, extra, ours; the PACS's are present or
    missing; lost ⊆ missing ∩ journal; the category is complete exactly when nothing is missing,
    uncommitted or extra."""
    v = decide(pacs, journal, held, uncommitted)
    parts = [v.present, v.missing, v.extra, v.ours]
    seen = pacs | journal | (held if held is not None else frozenset())
    assert frozenset().union(*parts) == seen
    assert sum(len(p) for p in parts) == len(seen)  # pairwise disjoint
    assert v.present | v.missing == pacs
    assert v.lost <= v.missing & journal
    assert v.uncommitted <= v.present
    if pacs:
        quiet = not (v.missing or v.extra or v.uncommitted)
        assert (v.category is Category.COMPLETE) == quiet
        assert (v.category is Category.MISSING) == bool(v.missing)
    else:
        assert v.category is Category.NOT_IN_PACS


@given(uids, uids, uids)
def test_a_destination_that_holds_everything_in_the_pacs_misses_nothing(
    pacs: frozenset[str], journal: frozenset[str], more: frozenset[str]
) -> None:
    v = decide(pacs, journal, pacs | more)
    assert not v.missing and not v.lost


def test_pace_spaces_the_calls_at_the_rate_on_an_injected_clock() -> None:
    """``--rate 4``: four C-FINDs a second at most — a burst of calls waits 0, 0.25, 0.5 s; a call
    after a pause does not wait (no credit saved beyond the next slot)."""
    now = [100.0]
    slept: list[float] = []
    pace = Pace(4.0, clock=lambda: now[0], sleep=slept.append)
    for _ in range(3):
        pace()
    assert slept == [0.25, 0.5]
    now[0] += 10.0
    pace()
    pace()
    assert slept == [0.25, 0.5, 0.25]
