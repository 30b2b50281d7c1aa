"""When and how fast push mode sends: the off-peak window and the per-destination ``max_mbps`` cap.

Both are pure and clock-injected so that their tests need no waiting. The timetable of
``[[bandwidth]]`` is :mod:`dicomproxy.relay.timetable`; the token bucket is
:class:`~dicomproxy.relay.bandwidth.RateLimiter`, re-exported here.
"""

from __future__ import annotations

import datetime as dt

from dicomproxy.relay.bandwidth import BURST, RateLimiter


def parse_window(text: str) -> tuple[dt.time, dt.time] | None:
    """``"20:00-07:00"`` → (20:00, 07:00); ``""`` → None (always open). The config validated it."""
    if not text:
        return None
    start, end = text.split("-")
    return dt.time.fromisoformat(start), dt.time.fromisoformat(end)


def in_window(window: tuple[dt.time, dt.time] | None, now: dt.datetime) -> bool:
    """Is local time ``now`` inside the window? Start inclusive, end exclusive; a window whose end
    is before its start crosses midnight (``20:00-07:00`` is open at 23:00 and at 06:59)."""
    if window is None:
        return True
    start, end = window
    t = now.time().replace(tzinfo=None)
    if start < end:
        return start <= t < end
    return t >= start or t < end


def next_opening(window: tuple[dt.time, dt.time] | None, now: dt.datetime) -> dt.datetime:
    """``now`` when open, else the next local time the window opens."""
    if in_window(window, now) or window is None:
        return now
    opening = now.replace(hour=window[0].hour, minute=window[0].minute, second=0, microsecond=0)
    return opening if opening > now else opening + dt.timedelta(days=1)


#: The token bucket is :class:`dicomproxy.relay.bandwidth.RateLimiter` (shared with the bandwidth
#: timetable and the relay's onward C-STOREs); named here for push's callers.
__all__ = ["BURST", "RateLimiter", "in_window", "next_opening", "parse_window"]
