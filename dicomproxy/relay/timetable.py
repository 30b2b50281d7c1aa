"""The bandwidth timetable, pure: which ``[[bandwidth]]`` rule is in force for a destination at a
local time, and when (and to what) that changes next. No clock, no I/O: time is an argument.

The most specific matching rule wins:

1. a rule naming the destination (``dest``) beats a rule for every destination;
2. then the rule covering fewer minutes a week (days × length of its hours);
3. then the rule written first in the file.

No rule matching = no cap at that time. Times are naive local times, as ``[push] window``'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from dicomproxy.config.bandwidth import BandwidthRule

#: Days after ``t`` searched for the next change (a weekly timetable repeats after 7).
HORIZON_DAYS = 8


@dataclass(frozen=True)
class Change:
    """The next change: from ``at`` on, ``mbps`` (None = no cap) under ``rule``."""

    at: dt.datetime
    mbps: float | None
    rule: BandwidthRule | None


def covers(rule: BandwidthRule, t: dt.datetime) -> bool:
    """Is local time ``t`` inside one of ``rule``'s periods? Start inclusive, end exclusive; a
    period crossing midnight belongs to the day it starts on."""
    tod = t.time().replace(tzinfo=None)
    day = t.weekday()
    if rule.start < rule.end:
        return day in rule.days and rule.start <= tod < rule.end
    # crossing midnight, or 24 hours from ``start`` when ``end == start`` (00:00-24:00: the day)
    if tod >= rule.start:
        return day in rule.days
    return tod < rule.end and (day - 1) % 7 in rule.days


def applies(rule: BandwidthRule, destination: str) -> bool:
    """Does ``rule`` speak of traffic to ``destination``?"""
    return not rule.dest or rule.dest == destination.strip()


def _rank(rule: BandwidthRule) -> tuple[int, int, int]:
    return (1 if rule.dest else 0, -rule.weekly_minutes, -rule.index)


def rule_at(rules: Sequence[BandwidthRule], destination: str, t: dt.datetime) -> BandwidthRule | None:
    """The rule in force for ``destination`` at ``t`` (the most specific that covers it), or None."""
    matching = [r for r in rules if applies(r, destination) and covers(r, t)]
    return max(matching, key=_rank) if matching else None


def rate_at(rules: Sequence[BandwidthRule], destination: str, t: dt.datetime) -> float | None:
    """Megabits per second allowed to ``destination`` at ``t``; None = no cap."""
    rule = rule_at(rules, destination, t)
    return rule.mbps if rule is not None else None


def _boundaries(rules: Sequence[BandwidthRule], destination: str, t: dt.datetime) -> list[dt.datetime]:
    """Every start and end of a period of the rules for ``destination`` after ``t``, in order."""
    found: set[dt.datetime] = set()
    for rule in rules:
        if not applies(rule, destination):
            continue
        for offset in range(-1, HORIZON_DAYS + 1):
            day = t.date() + dt.timedelta(days=offset)
            start = dt.datetime.combine(day, rule.start)
            end = start + dt.timedelta(minutes=rule.minutes)
            found.update(x for x in (start, end) if x > t)
    return sorted(found)


def next_change(rules: Sequence[BandwidthRule], destination: str, t: dt.datetime) -> Change | None:
    """The first time after ``t`` the rate for ``destination`` differs from the rate at ``t``
    (within :data:`HORIZON_DAYS`), or None when it never changes."""
    t = t.replace(tzinfo=None)
    now = rate_at(rules, destination, t)
    for at in _boundaries(rules, destination, t):
        rule = rule_at(rules, destination, at)
        mbps = rule.mbps if rule is not None else None
        if mbps != now:
            return Change(at, mbps, rule)
    return None


def describe(mbps: float | None) -> str:
    """``20 Mbit/s`` or ``no cap`` (status lines)."""
    return "no cap" if mbps is None else f"{mbps:g} Mbit/s"
