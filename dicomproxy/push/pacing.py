"""When and how fast push mode sends: the off-peak window and the per-destination ``max_mbps`` cap.

Both are pure and clock-injected so that their tests need no waiting.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable


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


#: Seconds of sending at the cap the bucket may save up while idle.
BURST = 0.2


class RateLimiter:
    """A token bucket in bits: ``take(n)`` returns once ``n`` bytes fit under ``mbps`` on average.

    Shared by every job to one destination (the cap is per destination, not per study). The
    bucket starts empty and holds at most :data:`BURST` seconds of credit, so neither the start
    nor the end of a pause is followed by a burst longer than that.
    """

    def __init__(
        self,
        mbps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = mbps * 1_000_000 / 8  # bytes per second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._credit = 0.0  # bytes
        self._last = clock()

    def take(self, nbytes: int) -> float:
        """Wait until ``nbytes`` may go (after they were sent: the average is what counts); the
        seconds waited."""
        with self._lock:
            now = self._clock()
            self._credit = min(self.rate * BURST, self._credit + (now - self._last) * self.rate)
            self._last = now
            self._credit -= nbytes
            wait = -self._credit / self.rate if self._credit < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
