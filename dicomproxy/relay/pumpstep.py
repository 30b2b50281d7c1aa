"""The pump's decisions, pure: what one relay job does next, from what it sees.

As hypercorn separates its protocol from its I/O shells, :func:`next_step` takes a
:class:`PumpView` (a snapshot: the requester, the onward associations, the look-ahead window, the
spool's end, the clocks) and names one :class:`Step`; :class:`~dicomproxy.relay.pump.Pump` is the
thin loop that does it (sockets, spool, pool and lanes live there) and asks again. Tested without
sockets in ``tests/test_pump_step.py``.

Pending responses are optional (PS3.4 C.4.2.1.4): one after a sub-operation at most every
:data:`PROGRESS_INTERVAL` seconds (and at once after the first and the last), and every
``pending_interval`` seconds while nothing happens, so the requester's DIMSE timer does not run out.
They carry Number of Remaining Sub-operations, so none is sent while that is unknown (PS3.4
C.4.2.1.6: an early-started job whose PACS announced no count, until its list is known).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Shortest gap between two Pending responses sent after sub-operations (seconds).
PROGRESS_INTERVAL = 0.2


class Step(enum.Enum):
    """What the pump does next."""

    CANCELLED = "cancelled"  # the requester sent C-CANCEL: stop, answer Cancel (0xFE00)
    ABORTED = "aborted"  # the requester's association is gone: stop
    RECONNECT = "reconnect"  # the one association was lost under an instance: re-open it
    DESTINATION_LOST = "destination-lost"  # no onward association left: stop fetching, finish
    PENDING = "pending"  # send a Pending response
    SUBMIT = "submit"  # hand the next prepared instance to a free association
    FINISH = "finish"  # everything that arrived was sent and answered: finish the job
    WAIT = "wait"  # wait for an instance, a conversion or a result


@dataclass(frozen=True)
class PumpView:
    """What :func:`next_step` looks at (:class:`~dicomproxy.relay.pump.Pump` makes it)."""

    cancelled: bool
    alive: bool
    #: Onward associations not lost for good, and whether one waits to be re-opened.
    lanes_up: int
    reconnect_wanted: bool
    #: The one association was lost for good by the instance just sent (checked before the requester).
    sent_into_loss: bool
    #: Look-ahead window: instances prepared, whether the first one's conversion is done.
    window: int
    head_ready: bool
    #: A live association can take one more instance; instances handed out, not answered yet.
    free: bool
    in_flight: int
    #: The upstream is done (the spool's end marker was taken).
    end: bool
    #: Number of Remaining Sub-operations is known.
    counted: bool
    #: Results recorded since the last Pending response; the first or the last sub-operation among them.
    recorded: bool
    first_or_last: bool
    #: Seconds since the last Pending response sent after sub-operations, and since any.
    since_progress: float
    since_pending: float


def next_step(view: PumpView, pending_interval: float) -> Step:
    """The pump's next step (module docstring): stop conditions first, then a due Pending
    response (so a stream of instances never starves the requester), then the next instance."""
    if view.sent_into_loss:
        return Step.DESTINATION_LOST
    if view.cancelled:
        return Step.CANCELLED
    if not view.alive:
        return Step.ABORTED
    if view.reconnect_wanted:
        return Step.RECONNECT
    if view.lanes_up == 0:
        return Step.DESTINATION_LOST
    if view.counted and (
        (view.recorded and (view.first_or_last or view.since_progress >= PROGRESS_INTERVAL))
        or view.since_pending >= pending_interval
    ):
        return Step.PENDING
    if view.window and view.free and view.head_ready:
        return Step.SUBMIT
    if view.end and not view.window and view.in_flight == 0:
        return Step.FINISH
    return Step.WAIT
