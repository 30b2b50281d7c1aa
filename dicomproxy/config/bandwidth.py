"""``[[bandwidth]]``: the bandwidth timetable (docs/push.md, Bandwidth timetable).

Each rule caps the megabits per second sent to one destination (``dest``) or to all of them, on
some days of the week between two local times. Which rule is in force at a given time, and when
that changes, is :mod:`dicomproxy.relay.timetable`'s (pure); this module only validates the rules.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dicomproxy.config.reader import Section

#: Day names in ``datetime.weekday()`` order (Monday = 0).
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")


@dataclass(frozen=True)
class BandwidthRule:
    """One ``[[bandwidth]]`` entry: ``mbps`` to ``dest`` ("" = every destination together) on
    ``days`` (weekday numbers, Monday = 0) from ``start`` to ``end`` local time.

    ``end`` before ``start`` crosses midnight: the period belongs to the day it starts on
    (``days = ["fri"]``, ``"22:00-06:00"`` is Friday 22:00 to Saturday 06:00). ``start == end``
    is 24 hours from ``start`` (``"00:00-24:00"``, the default: the whole day).
    """

    days: frozenset[int]
    start: dt.time
    end: dt.time
    mbps: float
    dest: str = ""
    #: Its place in the file (``bandwidth[index]``): names it in logs and breaks ties.
    index: int = 0

    @property
    def name(self) -> str:
        return f"bandwidth[{self.index}]"

    @property
    def minutes(self) -> int:
        """Length of one period in minutes (1..1440)."""
        start = self.start.hour * 60 + self.start.minute
        end = self.end.hour * 60 + self.end.minute
        return (end - start) % 1440 or 1440

    @property
    def weekly_minutes(self) -> int:
        """Minutes a week the rule covers (the smaller, the more specific)."""
        return self.minutes * len(self.days)


def parse_days(value: object, s: Section) -> frozenset[int]:
    """``"mon-fri"``, ``["mon", "wed"]``, ``["mon-wed", "sat"]`` → weekday numbers; a range may
    wrap (``"sat-mon"``)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise s.error("days", 'must be a day range ("mon-fri") or a list of days (["sat", "sun"])')
    days: set[int] = set()
    for item in items:
        parts = [p.strip().lower()[:3] for p in item.split("-")]
        if len(parts) > 2 or not all(p in DAYS for p in parts):
            raise s.error("days", f"{item!r} is not a day ({', '.join(DAYS)}) or a range of days")
        first, last = DAYS.index(parts[0]), DAYS.index(parts[-1])
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


def parse_hours(text: str, s: Section) -> tuple[dt.time, dt.time]:
    """``"08:00-18:00"`` → (08:00, 18:00); ``24:00`` as an end is midnight."""
    match = _HOURS_RE.match(text.strip())
    if match is None or (match.group(3) == "24" and match.group(4) != "00"):
        raise s.error("hours", f'must be "HH:MM-HH:MM" (e.g. "22:00-06:00"), not {text!r}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return dt.time(h1, m1), dt.time(h2 % 24, m2)


def rule(s: Section, index: int, peers: set[str]) -> BandwidthRule:
    """One ``[[bandwidth]]`` entry."""
    days = parse_days(s.value("days", "mon-sun"), s)
    start, end = parse_hours(s.string("hours", "00:00-24:00"), s)
    mbps = s.number("mbps")
    if mbps <= 0:
        raise s.error("mbps", f"must be a number > 0, not {mbps:g}")
    dest = s.string("dest", "").strip()
    if dest and dest not in peers:
        raise s.error("dest", f"{dest!r} is not a [[peers]] AE title")
    s.finish()
    return BandwidthRule(days, start, end, mbps, dest, index)


def rules(entries: Iterable[Section], peers: set[str]) -> tuple[BandwidthRule, ...]:
    """The ``[[bandwidth]]`` entries, in file order."""
    return tuple(rule(s, i, peers) for i, s in enumerate(entries))
