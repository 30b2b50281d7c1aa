"""EVT_C_FIND handler (PS3.4 C.4.1): thin; the work is in :mod:`dicomproxy.view.service`.

Statuses (PS3.4 C.4.1.1.4): Pending 0xFF00 per match, Success 0x0000, Cancel 0xFE00 after
C-CANCEL, 0xA900 for a malformed identifier, 0xC000 unable to process, 0xC001 exam view
unavailable, 0xC002 PACS unavailable (our 0xC0xx, docs/view.md). Failures carry an
Error Comment (0000,0902) without patient data and are logged once.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicomproxy.access import permitted
from dicomproxy.charsets import answer_charset, check_supported, declared_charsets
from dicomproxy.context import AppContext
from dicomproxy.errors import (
    DicomServiceError,
    InvalidIdentifier,
    NotAuthorized,
    UnableToProcess,
    ViewUnavailable,
)
from dicomproxy.status import Status
from dicomproxy.transport.pynetdicom_compat import provider_events_waiting, raw_socket
from dicomproxy.view.query import parse_identifier

LOG = logging.getLogger("dicomproxy.find")


#: Answers between two looks for a C-CANCEL waiting on the socket.
CANCEL_CHECK_EVERY = 16
#: Longest pause per look while pynetdicom's reactor takes in what is waiting (seconds).
READ_PAUSE = 0.2


def let_reactor_read(assoc: Any) -> None:
    """Give pynetdicom's DUL reactor the chance to read an incoming PDU (a C-CANCEL-RQ, PS3.7
    9.3.2.3) while we stream answers.

    The reactor either sends one queued PDU or reads one per loop, and reads only when its send
    queue is empty; a generator that produces answers faster than they are sent keeps it full, so a
    C-CANCEL was read only after the last answer (the cancel test failed about one run in four).
    When bytes are waiting on the socket, wait (at most :data:`READ_PAUSE`) until the queue has
    drained and the socket has been read. Nothing waits when nothing came in.
    """
    sock = raw_socket(assoc)
    if sock is None:
        return
    try:
        if not select.select([sock], [], [], 0)[0]:
            return
        deadline = time.monotonic() + READ_PAUSE
        while time.monotonic() < deadline and (
            provider_events_waiting(assoc) or select.select([sock], [], [], 0)[0]
        ):
            time.sleep(0.0005)
    except (OSError, ValueError):  # closed under us: the association is ending anyway
        return


def _failure(exc: DicomServiceError) -> Dataset:
    status = Dataset()
    status.Status = exc.status
    status.ErrorComment = exc.comment
    return status


class _Cancel:
    """``event.is_cancelled`` is consumed when read: remember a True."""

    def __init__(self, event: evt.Event) -> None:
        self.event = event
        self.seen = False

    def __call__(self) -> bool:
        if not self.seen and self.event.is_cancelled:
            self.seen = True
        return self.seen


def handle_find(event: evt.Event, ctx: AppContext) -> Iterator[tuple[Any, Dataset | None]]:
    """C-FIND SCP on a pynetdicom association: :func:`find_responses` with its request."""
    yield from find_responses(
        ctx,
        event.assoc.requestor.ae_title,
        str(event.request.AffectedSOPClassUID or ""),
        lambda: event.identifier,
        _Cancel(event),
        between=lambda: let_reactor_read(event.assoc),
    )


def find_responses(
    ctx: AppContext,
    calling: str,
    sop_class: str,
    load_identifier: Callable[[], Dataset],
    cancelled: Callable[[], bool],
    between: Callable[[], object] = lambda: None,
) -> Iterator[tuple[Any, Dataset | None]]:
    """C-FIND SCP, Patient and Study Root: PATIENT/STUDY from the view, SERIES/IMAGE via the PACS.

    The same for pynetdicom's associations (:func:`handle_find`) and the raw query acceptor
    (:mod:`dicomproxy.handlers.queries`). ``cancelled``: true once a C-CANCEL-RQ came (or the
    process stops); ``between``: run every :data:`CANCEL_CHECK_EVERY` answers."""

    def stop() -> bool:
        return cancelled() or ctx.stopping.is_set()

    model = "PATIENT" if sop_class == PatientRootQueryRetrieveInformationModelFind else "STUDY"
    try:
        if not permitted(ctx.config, calling, "find"):
            raise NotAuthorized(f"C-FIND not permitted for {calling}")
        if ctx.view is None or ctx.find is None:
            raise ViewUnavailable("exam view not configured")
        try:
            identifier = load_identifier()
        except Exception as exc:  # pynetdicom/pydicom decode errors of any kind
            raise InvalidIdentifier("identifier cannot be decoded") from exc
        requested = declared_charsets(identifier.get("SpecificCharacterSet"))
        problem = check_supported(requested)
        if problem:
            raise InvalidIdentifier(problem)
        query = parse_identifier(identifier, model)
        charset = answer_charset(requested, ctx.config.view.default_charset)
        LOG.info("C-FIND %s level %s from %s", model, query.level, calling)
        answers = ctx.find.answer(query, identifier, calling_ae=calling, charset=charset, cancelled=stop)
        for n, ds in enumerate(answers, 1):
            if n % CANCEL_CHECK_EVERY == 0:
                between()
            if stop():
                yield Status.CANCEL, None
                return
            yield Status.PENDING, ds
        if stop():
            yield Status.CANCEL, None
            return
    except DicomServiceError as exc:
        LOG.warning("C-FIND failed (0x%04X): %s", exc.status, exc)
        yield _failure(exc), None
        return
    except Exception as exc:  # a bug must not kill the association thread silently
        LOG.exception("C-FIND failed unexpectedly")
        yield _failure(UnableToProcess(f"internal error: {type(exc).__name__}")), None
        return
    yield Status.SUCCESS, None
