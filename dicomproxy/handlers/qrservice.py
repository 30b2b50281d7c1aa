"""C-MOVE / C-GET SCP response writer: the one place where we step around pynetdicom's generator protocol.

Why: pynetdicom 3.0.4's stock ``_move_scp`` / ``_get_scp`` (service_class.py) open the
destination association themselves, send only ``pydicom.Dataset`` objects (re-encoding
every instance, ~10x slower than passing the bytes through), cannot send a Pending
response without a sub-operation (so a slow PACS lets the requester time out), drop
instances beyond the announced count, and answer a refusing destination with 0xA801.
A relay must do all of these honestly (PS3.4 C.4.2.1.5 / C.4.3.1.5).

How (no global patching): :class:`RelayAE` builds its listening server with a request
handler that gives each accepted association the class :class:`RelayAssociation` (and with
supported contexts that are cheap to copy per association, :class:`SharedUIDContext`). That
subclass routes C-MOVE-RQ and C-GET-RQ on the Q/R models to :class:`RetrieveService`;
every other request (C-ECHO, C-FIND, C-STORE) goes to pynetdicom unchanged.

Handler protocol: ``EVT_C_MOVE`` / ``EVT_C_GET`` are still triggered with the usual event
(``event.is_cancelled`` works), but the handler yields :class:`RetrieveResponse` objects:
every Pending one is sent as a Pending response (PS3.4 C.4.2.1.4, counts only); the first
non-Pending one is the final response and ends the operation. The handler does its own
sub-operations (onward association for C-MOVE, ``event.assoc.send_c_store`` for C-GET).
"""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Iterator
from contextlib import nullcontext
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.status import Status, carries_error_comment
from dicomproxy.transport.pynetdicom_compat import accepted_context, reactor_poll

LOG = logging.getLogger("dicomproxy.qrservice")


#: Seconds the cloud's association's reactor sleeps between idle polls while its C-MOVE runs:
#: a Pending response or a C-CANCEL waits at most that long (pynetdicom's default is 1 ms).
MOVE_REACTOR_POLL = 0.01
_MOVE_UIDS = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"})
_GET_UIDS = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"})


def _fill(rsp: Any, res: RetrieveResponse, transfer_syntax: Any) -> None:
    rsp.Status = res.status
    rsp.Identifier = None
    rsp.ErrorComment = None
    if res.is_pending or res.status == Status.CANCEL:
        rsp.NumberOfRemainingSuboperations = res.remaining
    else:
        # Final responses carry no Remaining count (PS3.4 C.4.2.1.4, C.4.3.1.4)
        rsp.NumberOfRemainingSuboperations = None
    rsp.NumberOfCompletedSuboperations = res.completed
    rsp.NumberOfFailedSuboperations = res.failed
    rsp.NumberOfWarningSuboperations = res.warning
    if not res.is_pending and res.status != Status.SUCCESS and (res.failed_uids or res.failed):
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = list(res.failed_uids)
        raw = encode(ds, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian)
        rsp.Identifier = BytesIO(cast(bytes, raw))
    if res.comment and carries_error_comment(res.status):
        rsp.ErrorComment = res.comment[:64]


class RetrieveService(QueryRetrieveServiceClass):
    """C-MOVE/C-GET SCP driving :class:`RetrieveResponse` handlers (see the module docstring)."""

    def SCP(self, req: Any, context: Any) -> None:
        if isinstance(req, C_MOVE):
            self._run(req, context, evt.EVT_C_MOVE, C_MOVE())
        elif isinstance(req, C_GET):
            self._run(req, context, evt.EVT_C_GET, C_GET())
        else:  # pragma: no cover - routed here only for C-MOVE/C-GET
            super().SCP(req, context)

    def _run(self, req: C_MOVE | C_GET, context: Any, event: Any, rsp: C_MOVE | C_GET) -> None:
        cx_id = int(context.context_id)
        ts = context.transfer_syntax[0]
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        final = RetrieveResponse(Status.HANDLER_ERROR, comment="internal error in the relay")
        # A C-MOVE's instances go out on associations of their own: this one carries only Pending
        # responses and perhaps a C-CANCEL while the job runs, so its reactor may poll less often
        # (issue 29: ~10 % of the relay's CPU was that 1 ms poll). Not a C-GET: its C-STORE-RSPs
        # come in here.
        poll = reactor_poll(self.assoc, MOVE_REACTOR_POLL) if isinstance(req, C_MOVE) else nullcontext()
        with poll:
            final = self._drive(req, context, event, rsp, cx_id, ts, final)
        if not self.assoc.is_established:
            return
        _fill(rsp, final, ts)
        self.dimse.send_msg(rsp, cx_id)

    def _drive(
        self,
        req: C_MOVE | C_GET,
        context: Any,
        event: Any,
        rsp: C_MOVE | C_GET,
        cx_id: int,
        ts: Any,
        final: RetrieveResponse,
    ) -> RetrieveResponse:
        """Run the handler, sending its Pending responses; its final response (``final`` if it fails)."""
        try:
            gen = evt.trigger(
                self.assoc,
                event,
                {"request": req, "context": context.as_tuple, "_is_cancelled": self.is_cancelled},
            )
            for res in cast(Iterator[RetrieveResponse], gen):
                if not self.assoc.is_established:
                    cast(Any, gen).close()
                    return final
                if res.is_pending:
                    _fill(rsp, res, ts)
                    self.dimse.send_msg(rsp, cx_id)
                    continue
                final = res
                cast(Any, gen).close()
                break
        except Exception as exc:
            LOG.error("retrieve handler failed: %s\n%s", exc, traceback.format_exc())
        return final


class RelayAssociation(Association):
    """An acceptor association that serves C-MOVE/C-GET with :class:`RetrieveService`."""

    def _serve_request(self, msg: Any, context_id: int) -> None:
        cx = accepted_context(self, context_id)
        uid = str(getattr(msg, "AffectedSOPClassUID", "") or "")
        routed = (isinstance(msg, C_MOVE) and uid in _MOVE_UIDS) or (
            isinstance(msg, C_GET) and uid in _GET_UIDS
        )
        if not routed or cx is None or self._sent_release or not msg.is_valid_request:
            super()._serve_request(msg, context_id)
            return
        # As Association._serve_request does around service_class.SCP():
        self.dimse.cancel_req = {}
        self._is_paused = True  # lets the handler call send_c_store on this association
        try:
            RetrieveService(self).SCP(msg, cx)
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}


class _RelayRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # Same object, one more method: RelayAssociation adds no state of its own.
        assoc.__class__ = RelayAssociation
        return assoc


class SharedUIDContext(PresentationContext):
    """A supported presentation context whose deep copy shares its (immutable) UID objects.

    pynetdicom deep-copies the server's supported contexts for every association it accepts
    (``RequestHandler._create_association``) and only reads the copy during negotiation. The
    proxy supports 177 contexts x 45 transfer syntaxes, so a real deep copy built ~8,100 new
    ``pydicom.uid.UID`` objects per association: ~1.3 MB while the association lives and ~41 ms
    of GIL-bound CPU to accept it. Under the soak's load that copy alone was ~280,000 live UIDs,
    most of the RSS growth (docs/performance.md, "Soak memory"). Here the copy gets its own
    containers (lists, dicts, sets) but the same UID strings: 0.13 MB and ~0.5 ms.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedUIDContext:
        new = type(self).__new__(type(self))
        new.__dict__.update(
            {k: copy.copy(v) if isinstance(v, list | dict | set) else v for k, v in self.__dict__.items()}
        )
        return new

    @classmethod
    def of(cls, cx: PresentationContext) -> SharedUIDContext:
        new = cls()
        new.abstract_syntax = cx.abstract_syntax
        new.transfer_syntax = list(cx.transfer_syntax)
        new.scu_role = cx.scu_role
        new.scp_role = cx.scp_role
        return new


class _RelayServer(ThreadedAssociationServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["request_handler"] = _RelayRequestHandler
        super().__init__(*args, **kwargs)
        self.contexts = [SharedUIDContext.of(cx) for cx in self.contexts]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Look at the first PDU before pynetdicom builds an association (``RelayAE.intake``,
        :mod:`dicomproxy.transport.intake`): not an A-ASSOCIATE-RQ → closed at once; an archive's store
        association → the raw acceptor (:mod:`dicomproxy.transport.raw.receiver`); a C-FIND/C-ECHO-only
        one → the raw query acceptor (:mod:`dicomproxy.transport.raw.queries`); else pynetdicom."""
        intake = getattr(self.ae, "intake", None)
        if intake is not None and self.ssl_context is None:
            route = intake.route(request, client_address)
            if route != "dicom":
                handed = False
                try:
                    if route == "store":
                        intake.acceptor.serve(request, client_address)
                    elif route == "query":
                        handed = intake.queries.serve(request, client_address)
                finally:
                    # handed to the query process (dicomproxy.queryproc): only our copy is closed —
                    # a shutdown() would end the connection for the child too
                    (self.close_request if handed else self.shutdown_request)(request)
                return
        super().process_request_thread(request, client_address)


class RelayAE(AE):
    """An AE whose servers use :class:`RelayAssociation` and :class:`SharedUIDContext`;
    otherwise a plain pynetdicom AE.

    ``intake``: set before ``start_server`` (:class:`dicomproxy.transport.intake.Intake`): screens each
    plain-TCP connection and hands archives' store-only associations to the raw acceptor;
    None = pynetdicom sees every connection.
    """

    intake: Any = None

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_class"] = _RelayServer
        return super().make_server(*args, **kwargs)


__all__ = ["RelayAE", "RetrieveResponse"]
