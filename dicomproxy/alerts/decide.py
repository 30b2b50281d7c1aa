"""Which incidents to open and which to end this round: a pure function of what holds now, what the
journal has open, and which keys this node judges (tested without a database or a clock)."""

from __future__ import annotations

from collections.abc import Callable

from dicomproxy.alerts.message import Incident


def decide(
    active: dict[str, Incident], open_keys: set[str], judged: Callable[[str], bool]
) -> tuple[list[Incident], list[str]]:
    """(incidents to open: active and not open yet; keys to end: open, judged here, no longer active).

    An open key this node does not judge — another node's readiness check, or a kind whose source
    did not answer this round — is left alone: not seeing a condition is not seeing it end.
    """
    to_open = [active[key] for key in sorted(active) if key not in open_keys]
    to_end = sorted(key for key in open_keys if key not in active and judged(key))
    return to_open, to_end
