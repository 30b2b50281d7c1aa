"""One test per pynetdicom internal the proxy relies on (dicomproxy.transport.pynetdicom_compat and the
acceptor adapters in dicomproxy.handlers.qrservice). A pynetdicom upgrade that renames or reshapes one of
them fails here, by name, instead of somewhere in a relay test."""

from __future__ import annotations

import inspect
import threading

import pynetdicom
import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicomproxy.transport import pynetdicom_compat as compat
from testkit import free_port


def test_version_is_the_one_checked() -> None:
    assert pynetdicom.__version__.startswith("3.0."), "re-check every internal below, then widen"


@pytest.mark.parametrize(
    "switch",
    [
        "STORE_RECV_CHUNKED_DATASET",
        "STORE_SEND_CHUNKED_DATASET",
        "LOG_REQUEST_IDENTIFIERS",
        "LOG_RESPONSE_IDENTIFIERS",
    ],
)
def test_config_switches_exist(switch: str) -> None:
    assert isinstance(getattr(_config, switch), bool)


def test_storage_class_registry() -> None:
    classes = compat.storage_classes()
    assert classes["CTImageStorage"] == "1.2.840.10008.5.1.4.1.1.2"
    assert len(classes) > 100 and all(isinstance(v, str) for v in classes.values())


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (Association, "_get_valid_context"),  # valid_context_id
        (Association, "_serve_request"),  # qrservice.RelayAssociation overrides it
        (RequestHandler, "_create_association"),  # qrservice._RelayRequestHandler overrides it
        (DIMSEServiceProvider, "get_msg"),  # transport.net._CallerOnlyDIMSE overrides it
        (DULServiceProvider, "send_pdu"),  # bound_send_queue wraps it
        (AssociationSocket, "send"),  # install_send_lock wraps it
    ],
)
def test_private_methods_keep_their_shape(owner: type, name: str) -> None:
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone"
    expected = {
        "_get_valid_context": ["self", "ab_syntax", "tr_syntax", "role", "context_id", "allow_conversion"],
        "_serve_request": ["self", "msg", "context_id"],
        "_create_association": ["self"],
        "get_msg": ["self", "block"],
        "send_pdu": ["self", "primitive"],
        "send": ["self", "bytestream"],
    }[name]
    assert list(inspect.signature(getattr(owner, name)).parameters) == expected


def test_association_insides_on_a_real_association() -> None:
    """``dul.socket.socket``, ``dul.to_provider_queue``, ``_accepted_cx``, ``_is_paused``,
    ``_sent_release``, ``dimse.cancel_req`` on a live association with a real acceptor."""
    scp = AE("SCP")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda e: 0)])
    ae = AE("SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    try:
        assert assoc.is_established
        assert compat.raw_socket(assoc) is not None
        assert compat.provider_events_waiting(assoc) in (True, False)
        cx_id = compat.valid_context_id(assoc, Verification, "scu")
        assert compat.accepted_context(assoc, cx_id) is not None
        assert compat.accepted_context(assoc, 255) is None
        for attr in ("_is_paused", "_sent_release"):
            assert isinstance(getattr(assoc, attr), bool), attr
        assert isinstance(assoc.dimse.cancel_req, dict)
        assert compat.peer_max_length(assoc) >= 0
        compat.install_send_lock(assoc)
        compat.install_send_lock(assoc)  # idempotent
        assert isinstance(compat.send_lock_of(assoc), type(threading.Lock()))
        compat.bound_send_queue(assoc, 8)
        default = assoc.dul._run_loop_delay
        assert isinstance(default, float) and default < 0.01
        with compat.reactor_poll(assoc, 0.01):
            assert assoc.dul._run_loop_delay == 0.01
            assert assoc.send_c_echo().Status == 0  # the reactor still answers, less often awake
        assert assoc.dul._run_loop_delay == default
        status = assoc.send_c_echo()  # both wrappers on the path: still works
        assert status is not None and status.Status == 0
    finally:
        assoc.release()
        server.shutdown()


#: Attributes of pynetdicom objects that are not its public API.
PRIVATE_ATTRIBUTES = {"dul", "_get_valid_context", "_accepted_cx", "to_provider_queue", "send_pdu"}
PRIVATE_IMPORTS = {"_config", "_STORAGE_CLASSES"}
#: The acceptor adapters subclass pynetdicom's association machinery (documented there).
ADAPTERS = {"pynetdicom_compat.py", "qrservice.py"}


def test_internals_are_used_only_through_the_compat_module() -> None:
    import ast
    from pathlib import Path

    package = Path(compat.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ADAPTERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                offenders.append(f"{path.relative_to(package)}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
                offenders += [
                    f"{path.relative_to(package)}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name in PRIVATE_IMPORTS
                ]
    assert offenders == []


def test_one_place_opens_pynetdicom_associations() -> None:
    """``AE.associate`` is called in ``net.open_association`` only (NODELAY, timeouts, TLS and the
    requestor guard for every outgoing association); the raw data path opens its own with
    ``RawAssociation.open``."""
    import ast
    from pathlib import Path

    package = Path(compat.__file__).parent
    callers = sorted(
        f"{path.relative_to(package)}"
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "associate"
    )
    assert callers == ["net.py"]


@pytest.mark.parametrize("guarded", [False, True])
def test_the_requestor_guard_keeps_every_c_find_response_for_the_caller(guarded: bool) -> None:
    """pynetdicom#875 (CI, test_date_and_time_ranges): the association's reactor can be running while
    ``send_c_find`` waits, and take a response ("Received unexpected C-FIND service message"). Made
    likely here by never pausing the reactor: unguarded, answers are lost (24 of 300 in one run);
    guarded, none is."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]

    from dicomproxy.transport.net import guard_requestor

    matches = 300

    def answers(event: evt.Event) -> object:
        for i in range(matches):
            ds = Dataset()
            ds.StudyInstanceUID = f"1.2.3.{i}"
            yield 0xFF00, ds

    scp = AE("SCP")
    scp.add_supported_context(FIND)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, answers)])
    ae = AE("SCU")
    ae.add_requested_context(FIND)
    ae.dimse_timeout = 5
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
        assert assoc.is_established
        if guarded:
            guard_requestor(assoc)

        class Racy(type(assoc)):  # type: ignore[misc]
            """The stale ``_is_paused`` of the race, every time: the caller never waits for the
            reactor to pause, and the reactor (its checkpoint never cleared) never does."""

            _is_paused = property(lambda self: True, lambda self, value: None)

        assoc.__class__ = Racy
        assoc._reactor_checkpoint.clear = lambda: None  # type: ignore[method-assign]
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        got = [s.Status for s, _ in assoc.send_c_find(query, FIND) if s and "Status" in s]
        pending = got.count(0xFF00)
        if guarded:
            assert (pending, got[-1]) == (matches, 0x0000)
        else:  # the reactor took some (or the final one, and the caller waited out its DIMSE timeout)
            assert pending < matches or got[-1:] != [0x0000]
        if assoc.is_established:
            assoc.release()
    finally:
        ae.shutdown()
        server.shutdown()  # type: ignore[union-attr]


def test_a_reject_pynetdicom_took_for_an_abort_is_still_read_as_a_reject() -> None:
    """pynetdicom 3.0.4: when the acceptor's A-ASSOCIATE-RJ arrives (and the DUL closes the
    connection) before ``negotiate_association`` looks at its socket, the requestor aborts —
    seen in CI under load against the raw query acceptor. Made certain here by a caller that is
    slow right after sending the A-ASSOCIATE-RQ (its own EVT_REQUESTED handler sleeps):
    :func:`compat.rejection` finds the reject all the same, and ``open_association`` reports it."""
    import time

    from dicomproxy.transport.net import NoAssociation, Remote, open_association

    scp = AE("SCP")
    scp.add_supported_context(Verification)
    scp.require_called_aet = True  # a wrong called AE title: rejected at once (1, 1, 7)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    slow = [(evt.EVT_REQUESTED, lambda event: time.sleep(0.5))]
    try:
        ae = AE("SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="NOTUS", evt_handlers=slow)
        assert assoc.is_aborted and not assoc.is_rejected  # the race, every time
        rj = compat.rejection(assoc)
        assert rj is not None and (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 7)
        ae.shutdown()
        with pytest.raises(NoAssociation, match=r"association rejected \(result=Rejected Permanent") as info:
            open_association(
                "SCU",
                Remote("NOTUS", "127.0.0.1", port),
                add_contexts=lambda a: a.add_requested_context(Verification),
                evt_handlers=slow,
            )
        assert info.value.rejected
    finally:
        server.shutdown()
