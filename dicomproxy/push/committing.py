"""Push items waiting for their destination's Storage Commitment (PS3.4 Annex J).

To a ``[[peers]]`` entry with ``storage_commitment = true`` a push item whose images (and files)
were stored ends its run ``committing``, not ``done``: the relay's ledger
(:mod:`dicomproxy.relay.commitments`) asks the destination to commit what the job stored, and the
serving process's committer sends the N-ACTIONs. :meth:`CommitmentWait.settle`, run by the push
watcher every poll, reads each due ``committing`` item's references — the newest per instance over
the jobs of the item's generation — and moves it on (:func:`~dicomproxy.push.decide.after_commitment`):

- every instance committed → ``done`` (its re-checks scheduled from now);
- some failed → ``queued`` at once: the ledger made them unconfirmed, so the next delivery sends
  exactly those again (the same SOP Instance UIDs) and they are asked again in a new transaction;
- failed ``commit_attempts`` times, or never answered after the committer's last attempt →
  ``failed`` with the reason (``push retry`` starts over);
- still pending → looked at again after ``[push] poll_interval``.

Each move is one ``UPDATE … WHERE state = 'committing'``: nodes sharing a journal may both read an
item, only one moves it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.push.decide import AfterCommitment, after_commitment, recheck_delay
from dicomproxy.push.queue import COMMITTING, DONE, FAILED, PushQueue, push_queue
from dicomproxy.relay.commitments import CommitmentLedger
from dicomproxy.relay.journal import Journal

LOG = logging.getLogger("dicomproxy.push")


def commitment_ledger(config: Config, journal: Journal) -> CommitmentLedger | None:
    """The ledger, when a peer is asked to commit."""
    return CommitmentLedger(config, journal) if any(p.storage_commitment for p in config.peers) else None


class CommitmentWait:
    """Moves ``committing`` push items on once their destination answered."""

    def __init__(self, config: Config, queue: PushQueue, ledger: CommitmentLedger | None) -> None:
        self.config = config
        self.queue = queue
        self.ledger = ledger

    def stored(self, destination: str, job_id: int | None) -> bool:
        """A push item's delivery by ``job_id`` ended (its images and files stored): does it wait
        for ``destination``'s commitment? The job's order/report objects, sent after the relay
        journalled its transactions, are asked for here (:meth:`CommitmentLedger.job_ended` asks
        only for what no transaction of the job covers)."""
        if self.ledger is None or not self.ledger.wanted(destination):
            return False
        if job_id is not None:
            self.ledger.job_ended(job_id)
        return True

    def settle(self, now: Callable[[], dt.datetime] | None = None) -> int:
        """Move every due ``committing`` item that can be moved; how many were."""
        if self.ledger is None:
            return 0
        clock = now or self.queue.now
        q = select(
            push_queue.c.id, push_queue.c.destination, push_queue.c.generation, push_queue.c.rechecks
        ).where(push_queue.c.state == COMMITTING, push_queue.c.next_at <= clock())
        with self.queue.engine.connect() as conn:
            due = conn.execute(q).all()
        moved = 0
        for item_id, destination, generation, rechecks in due:
            jobs = self.queue.job_ids(int(item_id), int(generation))
            peer = self.config.peer(str(destination))
            states = self.ledger.states_of(jobs)
            # a destination since removed from the config: one attempt (nothing asks it again)
            attempts = peer.commit_attempts if peer is not None else 1
            verdict = after_commitment(states, self.ledger.failures_of(jobs), attempts)
            moved += self._move(int(item_id), str(destination), int(rechecks), verdict, clock(), len(states))
        return moved

    def _move(
        self,
        item_id: int,
        destination: str,
        rechecks: int,
        verdict: AfterCommitment,
        now: dt.datetime,
        instances: int,
    ) -> int:
        """Apply ``verdict`` to the item if it is still ``committing``; 1 when it moved on."""
        push = self.config.push
        values: dict[str, Any]
        if verdict.state == COMMITTING:
            values = {"next_at": now + dt.timedelta(seconds=push.poll_interval)}
        elif verdict.state == DONE:
            delay = recheck_delay(rechecks, push) if rechecks > 0 else 0.0
            values = {"state": DONE, "next_at": now + dt.timedelta(seconds=delay), "error": ""}
        else:
            values = {"state": verdict.state, "next_at": now, "error": verdict.reason}
        with self.queue.engine.begin() as conn:
            res = conn.execute(
                update(push_queue)
                .where(push_queue.c.id == item_id, push_queue.c.state == COMMITTING)
                .values(**values)
            )
        if verdict.state == COMMITTING or not res.rowcount:
            return 0
        if verdict.state == DONE:
            LOG.info("push item %d: every instance committed by %s: done", item_id, destination)
        else:
            LOG.log(
                logging.WARNING if verdict.state == FAILED else logging.INFO,
                "push item %d: %s (%s)",
                item_id,
                verdict.reason,
                destination,
            )
        outcome = {DONE: "committed", FAILED: "failed"}.get(verdict.state, "commit-resend")
        events.publish(events.PushDelivered(item_id, destination, outcome, instances))
        return 1
