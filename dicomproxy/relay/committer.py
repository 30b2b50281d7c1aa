"""The serving process's Storage Commitment sender (PS3.4 Annex J, SCU): one thread.

Every :data:`POLL_INTERVAL` it takes the due transactions of the
:class:`~dicomproxy.relay.commitments.CommitmentLedger` — new ones, and those not answered within
the peer's ``commit_timeout`` (doubling after each attempt) — and sends each as one N-ACTION on an
association of its own (:func:`~dicomproxy.transport.commitment.request_commitment`). The
N-EVENT-REPORT comes on that association or on a new one the peer opens to us
(:mod:`dicomproxy.handlers.commitment`); both go to :meth:`CommitmentLedger.answer`. After
``commit_attempts`` N-ACTIONs without a report, the transaction's instances are ``unanswered``
(one WARNING). One log line per N-ACTION.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from dicomproxy.config import Config
from dicomproxy.config.holder import Settings, as_settings
from dicomproxy.relay.commitments import CommitmentLedger, Transaction, answer_status
from dicomproxy.status import Status
from dicomproxy.transport.commitment import Report, request_commitment
from dicomproxy.transport.net import NoAssociation, Remote
from dicomproxy.transport.tls import client_tls_args

LOG = logging.getLogger("dicomproxy.commitment")

#: How often the ledger is looked at for due transactions (seconds).
POLL_INTERVAL = 1.0
#: How long an association stays open after the N-ACTION for a report sent on it (seconds; SCPs
#: that answer there do so right after the N-ACTION-RSP, the others open an association of their own).
SAME_ASSOCIATION_GRACE = 0.5


class Committer:
    """Sends due Storage Commitment requests until stopped."""

    def __init__(
        self, config: Config | Settings, ledger: CommitmentLedger, poll: float = POLL_INTERVAL
    ) -> None:
        #: The current Config (a reload changes the next retry / request, not a running one).
        self.settings = as_settings(config)
        self.ledger = ledger
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> Config:
        return self.settings.current

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commitment", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:  # the journal is down: the next round tries again
                LOG.exception("storage commitment: journal error")
            if self._stop.wait(self.poll):
                return

    def run_due(self, now: dt.datetime | None = None) -> int:
        """Send every due transaction this node wins; how many were sent."""
        sent = 0
        for tx in self.ledger.due(now):
            if self._stop.is_set():
                break
            sent += self.send(tx, now)
        return sent

    def send(self, tx: Transaction, now: dt.datetime | None = None) -> bool:
        """One attempt at ``tx`` (or, its attempts used up, give up on it)."""
        peer = self.config.peer(tx.destination)
        if peer is None or not peer.storage_commitment or tx.attempts >= peer.commit_attempts:
            self.ledger.give_up(tx.transaction_uid)
            LOG.warning(
                "commitment %s (job %d): no report from %s after %d request(s): %d instance(s) unanswered",
                tx.transaction_uid,
                tx.job_id,
                tx.destination,
                tx.attempts,
                len(tx.refs),
            )
            return False
        start = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        wait = peer.commit_timeout * 2**tx.attempts
        if not self.ledger.claim(tx, start + dt.timedelta(seconds=wait)):
            return False  # another node took it
        try:
            status = request_commitment(
                self.config.proxy.ae_title,
                Remote(peer.ae_title, peer.host, peer.port),
                tx.transaction_uid,
                tx.refs,
                self._answer,
                timeout=self.config.proxy.dimse_timeout,
                grace=SAME_ASSOCIATION_GRACE,
                tls_args=client_tls_args(peer.tls, peer.host),
            )
        except NoAssociation as exc:
            LOG.warning(
                "commitment %s (job %d): not asked: %s; again in %.0f s",
                tx.transaction_uid,
                tx.job_id,
                exc,
                wait,
            )
            return False
        if status != Status.SUCCESS:
            LOG.warning(
                "commitment %s (job %d): %s refused the request (0x%04X); again in %.0f s",
                tx.transaction_uid,
                tx.job_id,
                peer.ae_title,
                status,
                wait,
            )
            return False
        LOG.info(
            "commitment %s (job %d): %d instance(s) asked of %s (attempt %d)",
            tx.transaction_uid,
            tx.job_id,
            len(tx.refs),
            peer.ae_title,
            tx.attempts + 1,
        )
        return True

    def _answer(self, report: Report) -> int:
        return answer_status(self.ledger, report)
