"""How a destination confirms an instance: what one send's result means for the journal.

The :class:`~dicomproxy.relay.recorder.InstanceRecorder` asks a :class:`Confirmation` which status
category a send ended in (Success, Warning, anything else a failure) and
:class:`~dicomproxy.relay.outcome.JobState` counts it. Today's one kind is :class:`StoreResponse`:
the destination's C-STORE response. A confirmation that comes later (Storage Commitment, PS3.4
Annex J: N-ACTION, then an N-EVENT-REPORT) is a new class beside it.
"""

from __future__ import annotations

from typing import Protocol

from dicomproxy.relay.forward import SendResult


class Confirmation(Protocol):
    def category(self, res: SendResult) -> str:
        """``Success``, ``Warning`` or a failure category for one send."""
        ...


class StoreResponse:
    """The C-STORE response decides (PS3.4 B.2.3): Success stored; Warning (0xB000 coercion,
    0xB006 elements discarded, 0xB007 data set does not match) stored too; anything else not."""

    def category(self, res: SendResult) -> str:
        return res.category
