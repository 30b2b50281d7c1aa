"""Retries inside the serving process: automatic resume at start, and ``jobs retry`` hand-overs.

A C-MOVE job's missing instances are re-fetched from the PACS by an IMAGE-level C-MOVE *to us*
(or a C-GET), so the retry must run where our listening port is: in ``serve``. The journal is
the queue: ``jobs retry`` (or the resume at start) sets a job's outcome to ``retry-requested``;
this worker claims it (``retrying``, an UPDATE only one process can win) and runs
:func:`dicomproxy.relay.recovery.retry_job` with the server's own archive clients and engine, whose C-STOREs
arrive through the server's store acceptor. One log line per job.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.config.holder import Settings, as_settings
from dicomproxy.pacs.client import PacsClient
from dicomproxy.relay.engine import Engine
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.recovery import retry_job
from dicomproxy.relay.request import StudyResolver
from dicomproxy.status import JobOutcome

LOG = logging.getLogger("dicomproxy.resume")

#: How often the journal is looked at for requested retries (seconds).
POLL_INTERVAL = 1.0


class RetryWorker:
    """One thread per serving process; runs requested retries one after the other."""

    def __init__(
        self,
        config: Config | Settings,
        journal: Journal,
        clients: Mapping[str, PacsClient],
        poll: float = POLL_INTERVAL,
        engine: Engine | None = None,
        resolver: StudyResolver | None = None,
    ) -> None:
        #: The current Config (a reload changes the next retry / request, not a running one).
        self.settings = as_settings(config)
        self.journal = journal
        self.clients = clients
        #: The serving process's delivery engine (its transcoding pool); None: one per retry.
        self.engine = engine
        #: The exam view: a job killed before its request was resolved is resolved again.
        self.resolver = resolver
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> Config:
        return self.settings.current

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retry-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the retry in progress (if any); requests not yet claimed stay for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOG.warning("retry still running at shutdown; it resumes at the next start")

    def resume_interrupted(self) -> list[int]:
        """Request a retry of every C-MOVE job interrupted within ``[journal].resume_window``."""
        window = self.config.journal.resume_window
        if window <= 0:
            return []
        cutoff = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=window)
        resumed = [
            job_id for job_id in self.journal.interrupted_since(cutoff) if self.journal.request_retry(job_id)
        ]
        for job_id in resumed:
            LOG.info("job %d: interrupted, resuming (resume_window %.0f s)", job_id, window)
        return resumed

    def run_pending(self) -> int:
        """Claim and run requested retries until none is left (or a stop); how many ran."""
        ran = 0
        while not self._stop.is_set():
            job_id = self.journal.claim_retry()
            if job_id is None:
                return ran
            self._retry(job_id)
            ran += 1
        return ran

    def _run(self) -> None:
        try:
            self.resume_interrupted()
        except Exception:  # the journal is down: the loop below keeps trying
            LOG.exception("automatic resume failed")
        while True:
            try:
                self.run_pending()
            except Exception:
                LOG.exception("retry worker: journal error")
            if self._stop.wait(self.poll):
                return

    def _retry(self, job_id: int) -> None:
        events.publish(events.RetryRequested(job_id, by="serve"))
        try:
            result = retry_job(self.config, self.journal, job_id, self.clients, self.engine, self.resolver)
        except (LookupError, ValueError) as exc:
            LOG.warning("job %d: cannot be retried: %s", job_id, exc)
            self.journal.update(job_id, outcome=JobOutcome.FAILED, error=str(exc)[:2000])
            return
        except Exception as exc:
            LOG.exception("job %d: retry failed", job_id)
            self.journal.update(job_id, outcome=JobOutcome.INTERRUPTED, error=f"retry failed: {exc}"[:2000])
            return
        LOG.info(
            "job %d: retried: %s, %d from the spool, %d fetched again, %d sent, %d still unconfirmed%s",
            job_id,
            result.outcome,
            result.from_spool,
            result.refetched,
            result.sent,
            len(result.failed) + len(result.not_found),
            f" ({result.error})" if result.error else "",
        )
