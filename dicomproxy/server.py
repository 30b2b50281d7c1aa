"""The DICOM server: AE construction, presentation contexts, access control, lifecycle.

``Server(config).run()`` serves until SIGINT/SIGTERM, then stops accepting, lets active
associations finish within ``[proxy].drain_timeout`` and aborts the rest. A second signal
aborts at once. SIGHUP calls ``on_reload`` on the main thread (``serve``: the
:class:`~dicomproxy.reloader.Reloader`). Tests use :meth:`Server.start` / :meth:`Server.stop`
on a free port.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomproxy import __version__, access, events
from dicomproxy.audit.retention import RetentionTimer, audit_export_dir
from dicomproxy.audit.trail import AuditSubscriber, AuditTrail, JobIdentities
from dicomproxy.config import Config
from dicomproxy.config.holder import Settings
from dicomproxy.context import AppContext
from dicomproxy.handlers.commitment import handle_event_report
from dicomproxy.handlers.echo import handle_echo
from dicomproxy.handlers.find import handle_find
from dicomproxy.handlers.get import handle_get
from dicomproxy.handlers.move import handle_move
from dicomproxy.handlers.observe import observed_find, observed_retrieve
from dicomproxy.handlers.qrservice import RelayAE
from dicomproxy.handlers.queries import query_acceptor
from dicomproxy.pacs.store import handle_store, store_acceptor
from dicomproxy.queryproc.parent import QueryProcess, QueryRoute, wanted
from dicomproxy.relay.bandwidth import capped_destinations
from dicomproxy.relay.committer import Committer
from dicomproxy.relay.resume import RetryWorker
from dicomproxy.transport.commitment import COMMITMENT_CLASS
from dicomproxy.transport.intake import Intake
from dicomproxy.transport.net import NODELAY_HANDLERS
from dicomproxy.transport.peer import peer_of
from dicomproxy.transport.pynetdicom_compat import stream_datasets_to_files
from dicomproxy.transport.raw.acceptance import RawAcceptor
from dicomproxy.transport.raw.queries import QueryAcceptor
from dicomproxy.transport.raw.receiver import StoreAcceptor
from dicomproxy.transport.tls import server_context

LOG = logging.getLogger("dicomproxy.server")

QR_FIND = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
QR_MOVE = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
QR_GET = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)


def configure_pynetdicom() -> None:
    """The one place where pynetdicom's process-wide switches are set (at server build, not import).

    - ``STORE_RECV_CHUNKED_DATASET``: each received C-STORE data set is written straight to a
      file (``event.dataset_path``); the relay moves that file into its spool. Memory stays
      flat whatever the instance size (WSI of several GB, issue 8).
    - ``STORE_SEND_CHUNKED_DATASET``: ``send_c_store(path)`` sends the file's bytes without
      decoding them; it needs an accepted context with the file's exact transfer syntax,
      which :mod:`dicomproxy.relay.forward` guarantees (or converts first).
    """
    stream_datasets_to_files()


#: What the storage contexts accept, in the order an offered syntax is chosen (pynetdicom takes the
#: acceptor's order): Explicit VR Little Endian first. pynetdicom's own list starts with Implicit VR
#: LE, so an archive offering both (dcmqrscp) sent Implicit, and the relay then re-encoded every data
#: set for a destination that chose Explicit in a context with several syntaxes (measured: proxy CPU
#: 1.6 s instead of 0.6 s per 300 slices in `none` mode).
STORAGE_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian),
]


def build_ae(config: Config) -> AE:
    """An AE that accepts Verification, Q/R FIND/MOVE/GET and every storage class.

    Storage contexts accept every transfer syntax: the PACS's C-STOREs during our own
    C-MOVE keep whatever encoding it holds. For C-GET (PS3.4 C.4.3) the requester acts
    as storage SCP; role selection is accepted for it (``scp_role=True``).
    """
    configure_pynetdicom()
    ae = RelayAE(ae_title=config.proxy.ae_title)  # C-MOVE/C-GET via dicomproxy.handlers.qrservice
    ae.maximum_pdu_size = config.proxy.max_pdu
    ae.acse_timeout = config.proxy.acse_timeout
    ae.dimse_timeout = config.proxy.dimse_timeout
    ae.network_timeout = config.proxy.network_timeout or None
    # +1: pynetdicom counts the association being negotiated itself.
    ae.maximum_associations = config.proxy.maximum_associations
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for sop in (*QR_FIND, *QR_MOVE, *QR_GET):
        ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is None:  # pragma: no cover - every listed context has one
            continue
        ae.add_supported_context(cx.abstract_syntax, STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    # Storage Commitment N-EVENT-REPORTs on an association the peer opens (PS3.4 J.3.3): it takes
    # the SCP role (role selection, PS3.7 D.3.3.4), we the SCU's.
    ae.add_supported_context(COMMITMENT_CLASS, scu_role=True, scp_role=True)
    # Access control is ours (dicomproxy.access), with reasons in the log.
    ae.require_calling_aet = []
    ae.require_called_aet = False
    return ae


def _log_accepted(event: evt.Event) -> None:
    assoc = event.assoc
    events.publish(events.AssociationAccepted(peer_of(assoc), str(assoc.acceptor.ae_title).strip()))
    LOG.info(
        "association accepted: %s from %s:%s",
        assoc.requestor.ae_title,
        assoc.requestor.address,
        assoc.requestor.port,
    )


def _log_aborted(event: evt.Event) -> None:
    LOG.info("association aborted: %s", event.assoc.requestor.ae_title)


def build_handlers(ctx: AppContext, others: Callable[[], int] = lambda: 0) -> list[tuple[Any, ...]]:
    """``others()``: open associations pynetdicom does not count (the raw acceptors', the query
    process's), for ``maximum_associations``."""
    handlers: list[tuple[Any, ...]] = [
        *NODELAY_HANDLERS,
        (evt.EVT_REQUESTED, access.on_requested, [ctx.settings, ctx.rejections, others]),
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_ABORTED, _log_aborted),
        (evt.EVT_C_ECHO, handle_echo, [ctx]),
        (
            evt.EVT_C_FIND,
            observed_find(handle_find),
            [ctx],
        ),
        (evt.EVT_C_MOVE, observed_retrieve(handle_move), [ctx]),
        (evt.EVT_C_GET, observed_retrieve(handle_get), [ctx]),
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_N_EVENT_REPORT, handle_event_report, [ctx]),
    ]
    return handlers


class Server:
    """One listening AE bound to one application context."""

    def __init__(
        self,
        config: Config,
        ctx: AppContext | None = None,
        *,
        retries: bool = True,
        console: bool | None = None,
        on_reload: Callable[[], object] | None = None,
        queries: QueryProcess | None = None,
    ) -> None:
        """``retries``: run requested and interrupted job retries (:mod:`dicomproxy.relay.resume`) in
        this process; off for the short-lived listener ``jobs retry`` starts itself.
        ``console``: the HTTP console of ``[http]`` (default: as ``retries``; the audit trail runs
        either way when ``[audit] enabled``). ``on_reload``: what a SIGHUP runs (none: SIGHUP is
        left alone). ``queries``: the query process ``serve`` started (:mod:`dicomproxy.queryproc`);
        None: :meth:`start` starts one when ``[proxy] query_process`` applies."""
        self.config = config
        self._console_wanted = retries if console is None else console
        self.console: Any = None
        self._audit: AuditSubscriber | None = None
        self._retention: RetentionTimer | None = None
        self._trail: AuditTrail | None = None
        self._atna: Any = None
        self._identities: JobIdentities | None = None
        self.alerts: Any = None
        self.ctx = ctx if ctx is not None else AppContext(Settings(config))
        self.retry_worker: RetryWorker | None = None
        self.committer: Committer | None = None
        self._retries = retries
        self.ae = build_ae(config)
        self._server: Any = None
        self.store_acceptor: StoreAcceptor | None = None
        self.query_acceptor: QueryAcceptor | None = None
        self.queries = queries
        self._stop_requested = threading.Event()
        self._reload_requested = threading.Event()
        self._wake = threading.Event()
        self._on_reload = on_reload
        self._force = False

    @property
    def port(self) -> int:
        """The bound port (useful when the config said 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start listening in background threads."""
        tls = self.config.proxy.tls
        self.store_acceptor = store_acceptor(self.config, self.ctx, self.ae, self._all_associations)
        self.query_acceptor = query_acceptor(self.config, self.ctx, self.ae, self._all_associations)
        if self.queries is None and self.query_acceptor is not None and wanted(self.config):
            self.queries = QueryProcess.spawn(self.config)
        if self.queries is not None:
            self.ctx.settings.subscribe(self.queries.reconfigure)
        routes = (
            QueryRoute(self.query_acceptor, self.queries, self._own_associations)
            if self.query_acceptor is not None
            else None
        )
        self.ae.intake = Intake(  # type: ignore[attr-defined]
            self.config.proxy.acse_timeout, self.ctx.rejections, self.store_acceptor, routes
        )
        self._server = self.ae.start_server(
            (self.config.proxy.host, self.config.proxy.port),
            block=False,
            evt_handlers=build_handlers(self.ctx, lambda: self._raw_active() + self._process_active()),
            ssl_context=server_context(tls) if tls else None,
        )
        LOG.info(
            "listening as %s on %s:%d%s",
            self.config.proxy.ae_title,
            self.config.proxy.host,
            self.port,
            " (TLS)" if tls else "",
        )
        self._start_observers()
        if self._retries and self.ctx.journal is not None and self.ctx.archives:
            # ProcessStarted's audit of the jobs the last process died in reads them as `interrupted`:
            # it runs before the automatic resume picks them up (and changes that)
            events.flush()
            engine = self.ctx.relay.engine if self.ctx.relay is not None else None
            self.retry_worker = RetryWorker(
                self.ctx.settings, self.ctx.journal, self.ctx.archives, engine=engine, resolver=self.ctx.view
            )
            self.retry_worker.start()
        if self.ctx.relay is not None and self.ctx.journal is not None:  # [[bandwidth]]: the nodes alive
            self.ctx.relay.engine.bandwidth.start(
                self.ctx.journal.engine, self.ctx.journal.node, capped_destinations(self.config)
            )
        if self._retries and self.ctx.push is not None:  # push mode runs in `serve` only
            self.ctx.push.start()
        if self._retries and self.ctx.corrections is not None:  # `serve` only, with or without push
            self.ctx.corrections.start()
        if self._retries and self.ctx.commitments is not None:  # Storage Commitment requests: `serve` only
            self.committer = Committer(self.ctx.settings, self.ctx.commitments)
            self.committer.start()

    def _start_observers(self) -> None:
        """The audit trail, the HTTP console and the alerts (docs/operations.md), fed by dicomproxy.events."""
        if self.config.audit.enabled or self.config.audit.syslog:
            self._identities = JobIdentities(self.ctx.view)  # first: the two below read it
            events.subscribe(self._identities)
        if self.config.audit.enabled and self.ctx.journal is not None:
            trail = self._trail = AuditTrail(self.ctx.journal.engine, self.config.audit.hash)
            self._audit = AuditSubscriber(trail, self._identities)
            events.subscribe(self._audit)
            if self.config.audit.keep_days:
                self._retention = RetentionTimer(
                    trail, self.config.audit.keep_days, audit_export_dir(self.config)
                )
                self._retention.start()
        if self.config.audit.syslog:
            from dicomproxy.audit.atna import start_atna

            self._atna = start_atna(self.config, self._identities)
        if self._console_wanted and self.config.http.port:
            from dicomproxy.console.app import Console  # the HTTP stack only when it is configured

            queries = self.queries.state if self.queries is not None else None
            console = Console(self.config, self.ctx, self.association_list, self._trail, queries)
            try:
                console.start()
                self.console = console
            except OSError as exc:  # DICOM keeps working; monitoring sees /healthz missing
                LOG.error(
                    "HTTP console not started on %s:%d: %s", self.config.http.host, self.config.http.port, exc
                )
        if self._retries and self.config.alerts.targets:  # `serve` only, like push
            from dicomproxy.alerts.service import AlertService  # httpx only when alerts are configured

            readiness = self.console.readiness if self.console is not None else None
            queries = self.queries.state if self.queries is not None else None
            self.alerts = AlertService(self.config, self.ctx, readiness, query_process=queries)
            self.alerts.start()
        events.publish(events.ProcessStarted(ae_title=self.config.proxy.ae_title, version=__version__))

    def _stop_observers(self, clean: bool) -> None:
        events.publish(events.ProcessStopped(ae_title=self.config.proxy.ae_title, clean=clean))
        if self.alerts is not None:  # before the console: it may use the console's readiness checks
            self.alerts.stop()
            self.alerts = None
        if self.console is not None:
            self.console.stop()
            self.console = None
        if self._retention is not None:
            self._retention.stop()
            self._retention = None
        if self._audit is not None:
            events.unsubscribe(self._audit)  # after the events so far are written
            self._audit = None
        if self._atna is not None:
            events.unsubscribe(self._atna)
            self._atna.sender.stop()
            self._atna = None
        if self._identities is not None:
            events.unsubscribe(self._identities)
            self._identities = None

    def association_list(self) -> list[dict[str, Any]]:
        """Inbound associations open now, for the status page (AE titles and addresses only; ``via``:
        pynetdicom, or the raw store/query acceptor of :mod:`dicomproxy.transport.raw`)."""
        out = []
        for assoc in list(self.ae.active_associations):
            if assoc.is_acceptor:
                req = assoc.requestor
                out.append(
                    {
                        "calling_ae": str(req.ae_title).strip(),
                        "address": f"{req.address}:{req.port}",
                        "via": "pynetdicom",
                    }
                )
        for acceptor in self._raw_acceptors():
            out.extend(
                {"calling_ae": calling, "address": f"{ip}:{port}", "via": f"raw {acceptor.kind}"}
                for calling, (ip, port) in acceptor.open_associations()
            )
        if self.queries is not None:
            out.extend(
                {"calling_ae": calling, "address": f"{ip}:{port}", "via": "query process"}
                for calling, (ip, port) in self.queries.open_associations()
            )
        return out

    def _raw_acceptors(self) -> list[RawAcceptor]:
        """The raw store and query acceptors this server runs (:mod:`dicomproxy.transport.intake`)."""
        return [a for a in (self.store_acceptor, self.query_acceptor) if a is not None]

    def _raw_active(self) -> int:
        return sum(a.active for a in self._raw_acceptors())

    def _process_active(self) -> int:
        return self.queries.active if self.queries is not None else 0

    def active_associations(self) -> int:
        """Inbound associations: pynetdicom's, the raw acceptors' and the query process's."""
        inbound = len([a for a in self.ae.active_associations if a.is_acceptor])
        return inbound + self._raw_active() + self._process_active()

    def _own_associations(self) -> int:
        """Associations of this process: pynetdicom's (both directions) and the raw acceptors'."""
        return len(self.ae.active_associations) + self._raw_active()

    def _all_associations(self) -> int:
        """What ``maximum_associations`` limits: this process's and the query process's."""
        return self._own_associations() + self._process_active()

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Stop accepting, wait for active associations, abort what is left.

        Returns True if everything finished within the drain timeout.
        """
        timeout = self.config.proxy.drain_timeout if drain_timeout is None else drain_timeout
        self.ctx.stopping.set()
        if self.ctx.push is not None:  # its running studies are cancelled and due again for any node
            self.ctx.push.stop(timeout)
        if self.ctx.corrections is not None:  # a claimed correction is resumed by any node later
            self.ctx.corrections.stop(timeout)
        if self.retry_worker is not None:  # a retry in progress still needs the listener (C-MOVE to us)
            self.retry_worker.stop(timeout)
        if self.committer is not None:  # open transactions stay in the journal: asked again at the next start
            self.committer.stop(timeout)
        if self._server is not None:
            self._server.shutdown()  # stop listening; running associations continue
            self._server = None
        deadline = time.monotonic() + timeout
        queries_clean = True
        if self.queries is not None:  # its drain first: its last events reach the audit trail below
            queries_clean = self.queries.stop(timeout, hurry=lambda: self._force)
            self.queries = None
        while self.active_associations() and time.monotonic() < deadline and not self._force:
            time.sleep(0.05)
        left = [a for a in self.ae.active_associations]
        for assoc in left:
            assoc.abort()
        raw = sum(a.abort_all() for a in self._raw_acceptors())
        if left or raw:
            LOG.warning("drain timeout: aborted %d association(s)", len(left) + raw)
        self.ae.shutdown()
        self._stop_observers(clean=not left and not raw and queries_clean)
        if self.ctx.relay is not None:  # the other nodes take up this node's share of the timetable
            self.ctx.relay.engine.bandwidth.stop()
        self.ctx.close()
        LOG.info("stopped")
        return not left and not raw and queries_clean

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop; a second request forces it."""
        if self._stop_requested.is_set():
            self._force = True
            LOG.warning("second stop request: aborting associations now")
        self._stop_requested.set()
        self._wake.set()

    def request_reload(self) -> None:
        """Ask :meth:`run` to call ``on_reload`` (SIGHUP); several requests before it runs are one."""
        self._reload_requested.set()
        self._wake.set()

    def run(self, on_started: Callable[[], object] | None = None) -> bool:
        """Serve until a stop request (signal), then drain. Returns True on a clean drain.
        ``on_started``: called once listening (``serve`` writes its pid file)."""
        # Handlers before start: a signal during start-up (console, retry worker) is a stop request.
        with self._signals():
            self.start()
            if on_started is not None:
                on_started()
            while not self._stop_requested.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._reload_requested.is_set() and not self._stop_requested.is_set():
                    self._reload_requested.clear()
                    self._reload()
            LOG.info("stop requested: draining (timeout %.0f s)", self.config.proxy.drain_timeout)
            return self.stop()

    def _reload(self) -> None:
        if self._on_reload is None:
            return
        try:
            self._on_reload()
        except Exception:  # a bug in a reload must not end the service
            LOG.exception("reload failed; the running configuration is unchanged")

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM request a stop, SIGHUP a reload (with ``on_reload``); the previous
        handlers are restored afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        def hangup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self._on_reload is not None:
            old[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
        try:
            yield
        finally:
            for sig, previous in old.items():
                signal.signal(sig, previous)
