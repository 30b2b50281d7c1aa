"""The query process (dicomproxy.queryproc, issue 29): C-FIND/C-ECHO-only associations served by a
child of the serving process. What the parent must still see (audit rows, log lines, the
association list and limit), reload, drain, a dead child (served in process again), a dead parent
(the child ends), the priorities ``serve`` sets, the side table the child shares but never builds.

The answers themselves are tested byte for byte against pynetdicom's path in
tests/test_raw_queries.py, whose proxies run with and without the query process. Real peers:
pynetdicom SCUs, a SQLite view, ``dicomproxy serve`` as a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import create_engine

from dicomproxy.audit.trail import AuditTrail
from dicomproxy.cli.serve import CHILD_NAME
from dicomproxy.config import Config
from dicomproxy.queryproc.channel import MAX_MESSAGE, Channel, ChannelClosed
from dicomproxy.queryproc.parent import QueryProcess, _Forked
from dicomproxy.relay.journal import Journal
from dicomproxy.server import Server
from dicomproxy.transport.net import guard_requestor
from dicomproxy.transport.pynetdicom_compat import rejection
from dicomproxy.view.repository import ExamView
from testkit import Process, free_port, wait_until
from testkit.viewdb import insert_rows
from tests.conftest import FIND_PEERS, ConfigFactory
from tests.view_data import CT, FindClient, fill_view, view_rows


@pytest.fixture
def config(sqlite_url: str, make_config: ConfigFactory) -> Config:
    fill_view(sqlite_url)
    return make_config(proxy={"query_process": True}, peers=FIND_PEERS)


@pytest.fixture
def proxy(config: Config, run_proxy: Callable[[Config], Server]) -> Server:
    server = run_proxy(config)
    assert server.queries is not None and server.queries.wait_ready(30)
    return server


def via(server: Server) -> list[str]:
    return sorted(f"{a['calling_ae']} via {a['via']}" for a in server.association_list())


def test_a_query_association_is_the_child_s_and_its_c_find_is_in_the_parent_s_audit_trail(
    proxy: Server, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with FindClient(proxy.port) as client:
        wait_until(lambda: via(proxy) == ["jobserver via query process"], 5, "the child's association")
        assert proxy.active_associations() == 1
        assert client.uids(PatientID=CT.patient.patient_id) >= {CT.study_uid}
    wait_until(lambda: proxy.active_associations() == 0, 5, "the association's end")
    proxy.stop(drain_timeout=2.0)  # the child's events are taken in before the trail stops
    trail = AuditTrail(Journal.for_config(config.journal.url, config.data_path).engine)
    finds = [r for r in trail.rows() if r["action"] == "find"]
    assert len(finds) == 1 and finds[0]["outcome"] == "success", finds
    assert CT.patient.patient_id in finds[0]["detail"]  # the query's keys: what the trail is for
    # the child's log lines went through this process's logging, without patient data at INFO
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomproxy.find"]
    assert lines == ["C-FIND STUDY level STUDY from jobserver"], lines
    proxy_lines = [r.getMessage() for r in caplog.records if r.name.startswith("dicomproxy")]
    assert not any(CT.patient.patient_id in line for line in proxy_lines)  # (pynetdicom's: the test's SCU)


def test_a_dead_child_leaves_the_queries_to_the_parent(
    proxy: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert proxy.queries is not None
    os.kill(proxy.queries.pid, signal.SIGKILL)
    wait_until(lambda: not proxy.queries.ready, 5, "the parent noticing")  # type: ignore[union-attr]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "served in this process from now on" in errors[0], errors
    assert "closed its channel, exit code -9:" in errors[0], errors
    with FindClient(proxy.port) as client:
        wait_until(lambda: via(proxy) == ["jobserver via raw query"], 5, "the in-process association")
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}


def test_the_status_json_and_metrics_show_the_query_process_and_its_loss(
    sqlite_url: str, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    """``/api/status`` (its ``query_process`` section, a row among the checks, ``via`` of each
    association, the last errors) and ``/metrics`` (a state set), read over HTTP from the console."""
    fill_view(sqlite_url)
    config = make_config(proxy={"query_process": True}, peers=FIND_PEERS, http={"port": free_port()})
    server = run_proxy(config)
    assert server.queries is not None and server.queries.wait_ready(30) and server.console is not None
    base = server.console.url

    def get(path: str) -> bytes:
        with urllib.request.urlopen(base + path, timeout=30) as resp:
            return bytes(resp.read())

    def status() -> dict[str, Any]:
        return dict(json.loads(get("/api/status")))

    def row(body: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in body["checks"] if c["name"] == "query process")

    pid = server.queries.pid
    with FindClient(server.port):
        wait_until(lambda: status()["query_process"]["associations"] == 1, 5, "the child's association")
        body = status()
        assert body["query_process"] == {"pid": pid, "state": "serving", "detail": None, "associations": 1}
        assert (
            row(body)["ok"]
            and row(body)["detail"] == f"pid {pid} serving C-FIND/C-ECHO-only associations (1 open)"
        )
        assert [a["via"] for a in body["associations"]] == ["query process"]
        metrics = get("/metrics").decode()
        assert 'dicomproxy_query_process_state{state="serving"} 1.0' in metrics
        assert 'dicomproxy_query_process_state{state="lost"} 0.0' in metrics
        assert "dicomproxy_query_process_associations 1.0" in metrics
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: status()["query_process"]["state"] == "lost", 10, "the loss on the status JSON")
    body = status()
    assert not row(body)["ok"] and "exit code -9" in row(body)["detail"], row(body)

    def lost() -> list[str]:  # the events reach the page's state on their own thread
        return [e["message"] for e in status()["errors"] if e["where"] == "query process"]

    wait_until(lambda: lost(), 5, "the last error")  # (beside the PACS's)
    assert lost() == [f"pid {pid} closed its channel, exit code -9"]
    _, checks = server.console.readiness.run()  # queries are answered all the same: not /readyz's
    assert "query process" not in [c.name for c in checks]
    metrics = get("/metrics").decode()
    assert 'dicomproxy_query_process_state{state="lost"} 1.0' in metrics
    assert 'dicomproxy_query_process_state{state="serving"} 0.0' in metrics
    counted = 'dicomproxy_errors_total{where="query process"} 1.0'  # (events: their own thread)
    wait_until(lambda: counted in get("/metrics").decode(), 5, "the error counted")


def test_a_reload_reaches_the_child(proxy: Server, config: Config, make_config: ConfigFactory) -> None:
    """``Settings.replace`` is what a SIGHUP ends in (tests/test_reload.py sends the signal to a real
    serve): the child's next C-FIND is judged by the new peer list."""
    with FindClient(proxy.port) as client:
        assert client.find({"PatientID": CT.patient.patient_id}).status == 0x0000
    echo_only = [{**p, "services": ["echo"]} if p["ae_title"] == "jobserver" else p for p in FIND_PEERS]
    proxy.ctx.settings.replace(make_config(proxy={"query_process": True}, peers=echo_only))

    def refused() -> bool:
        with FindClient(proxy.port) as client:
            return client.find({"PatientID": CT.patient.patient_id}).status == 0x0124

    wait_until(refused, 5, "the reloaded peer list in the child")


def test_the_association_limit_counts_both_processes(
    config: Config, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    server = run_proxy(
        make_config(proxy={"query_process": True, "maximum_associations": 2}, peers=FIND_PEERS)
    )
    assert server.queries is not None and server.queries.wait_ready(30)
    with FindClient(server.port) as in_child, FindClient(server.port, also=(MOVE,)) as in_parent:
        wait_until(
            lambda: via(server) == ["jobserver via pynetdicom", "jobserver via query process"], 5, "both"
        )
        for also in ((), (MOVE,)):  # the child's gate and pynetdicom's: 2 open, a third refused
            ae = AE("jobserver")
            ae.add_requested_context(Verification)
            for sop in also:
                ae.add_requested_context(sop)
            third = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
            assert rejection(third) is not None, also
            ae.shutdown()
        assert in_child.uids(AccessionNumber=CT.accession) == {CT.study_uid}
        assert in_parent.uids(AccessionNumber=CT.accession) == {CT.study_uid}


def test_the_drain_aborts_what_the_child_still_serves(
    proxy: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert proxy.queries is not None
    child = proxy.queries.proc
    with FindClient(proxy.port) as client:
        wait_until(lambda: proxy.active_associations() == 1, 5, "the child's association")
        started = time.monotonic()
        assert proxy.stop(drain_timeout=1.0) is False  # not clean: one association aborted
        assert time.monotonic() - started < 1.0 + 5
        wait_until(lambda: not client.assoc.is_established, 5, "the A-ABORT")
        assert client.assoc.is_aborted
    assert child.returncode == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "query process: drain timeout: aborted 1 association(s)" in messages, messages


def _draining(proxy: Server, drain: float) -> tuple[threading.Thread, list[bool]]:
    """``proxy.stop(drain)`` in a thread, once the child's one association is open; returned half a
    second into the drain (the thread, and the list its result goes into)."""
    wait_until(lambda: proxy.active_associations() == 1, 5, "the child's association")
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(proxy.stop(drain_timeout=drain)))
    stopper.start()
    wait_until(lambda: proxy.ctx.stopping.is_set(), 5, "the stop")
    time.sleep(0.5)  # the drain has begun; the association is still open
    return stopper, stopped


def test_a_second_stop_request_cuts_the_child_s_drain_short(
    proxy: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """serve's second SIGINT/SIGTERM (``request_stop`` twice) aborts at once what the child still
    serves, instead of waiting out the drain (60 s here)."""
    caplog.set_level(logging.INFO)
    assert proxy.queries is not None
    child = proxy.queries.proc
    with FindClient(proxy.port) as client:
        stopper, stopped = _draining(proxy, 60.0)
        assert client.assoc.is_established and stopper.is_alive()
        proxy.request_stop()
        proxy.request_stop()  # the second: force
        stopper.join(20)
        assert not stopper.is_alive() and stopped == [False]
        wait_until(lambda: not client.assoc.is_established, 5, "the A-ABORT")
        assert client.assoc.is_aborted
    assert child.returncode == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "query process: drain timeout: aborted 1 association(s)" in messages, messages


def test_an_association_that_ends_within_the_drain_is_not_aborted(proxy: Server) -> None:
    """The child waits ``drain_timeout`` for its associations (as serve does for its own): one
    released during the drain ends normally, and the stop is clean."""
    assert proxy.queries is not None
    child = proxy.queries.proc
    client = FindClient(proxy.port).__enter__()
    stopper, stopped = _draining(proxy, 20.0)
    assert client.assoc.is_established
    client.close()  # A-RELEASE during the drain
    stopper.join(30)
    assert stopped == [True] and child.returncode == 0
    assert client.assoc.is_released and not client.assoc.is_aborted


def test_a_clean_stop_ends_the_child(proxy: Server) -> None:
    assert proxy.queries is not None
    child = proxy.queries.proc
    with FindClient(proxy.port) as client:
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}
    wait_until(lambda: proxy.active_associations() == 0, 5, "the association's end")
    assert proxy.stop(drain_timeout=2.0) is True
    assert child.returncode == 0


def test_a_child_whose_channel_breaks_is_killed_and_replaced_by_the_parent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message that is not one of ours (here: not a pickle) from a child that is still running:
    it cannot be trusted to serve; it is killed and the queries stay in the parent."""
    caplog.set_level(logging.INFO)
    ours, theirs = Channel.pair()
    child = subprocess.Popen(["sleep", "60"])  # a live process standing in for the child
    process = QueryProcess(child, ours)
    theirs.send(pickle.dumps(("ready",)))
    assert process.wait_ready(5)
    theirs.send(b"not a pickle")
    wait_until(lambda: child.poll() is not None, 5, "the kill")
    assert child.returncode == -signal.SIGKILL and not process.ready
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("channel failed: UnpicklingError:" in e and "exit code" not in e for e in errors), errors
    a, b = socket.socketpair()
    assert process.serve(a, ("127.0.0.1", 1), 0) is False  # served here from now on
    for s in (a, b, theirs):
        s.close()
    process.stop(0.1)


def test_a_forked_child_is_waited_for_killed_and_reaped_as_popen_does() -> None:
    """``_Forked``: what QueryProcess uses of a child ``serve`` forked (its stop waits with a timeout,
    then kills and waits without one)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes `sleep` at once
        os.execvp("sleep", ["sleep", "30"])
    child = _Forked(pid)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    child.kill()
    assert child.wait() == -signal.SIGKILL == child.returncode == child.poll()
    child.kill()  # gone: nothing to do, no error


# --- the side table: the child reads and syncs the parent's, never builds it --------------------


def test_the_child_s_side_table_waits_for_the_parent_s_build_then_syncs(config: Config) -> None:
    engine = create_engine(config.view.url)
    follower = ExamView(config, builds_side_tables=False)
    assert follower.uid_index is not None
    assert follower.examine_ids_for_uids([CT.study_uid]) is None  # not built: the caller scans the view
    assert not follower.uid_index.is_built()  # and the follower built nothing
    leader = ExamView(config)
    assert leader.uid_index is not None and leader.uid_index.sync(force=True) > 0
    found = follower.examine_ids_for_uids([CT.study_uid])
    assert found is not None and found[0]
    # a study registered now: the follower's miss syncs (incrementally) and finds it
    row = {
        **view_rows()[0],
        "ExamineID": "E-NEW",
        "StudyInstanceUID": "1.2.3.999",
        "AccessionNumber": "NEW",
        "RowTimestamp": dt.datetime.now() + dt.timedelta(days=1),  # above every mark (a RIS stamps inserts)
    }
    insert_rows(engine, [row])
    found = follower.examine_ids_for_uids(["1.2.3.999"])
    assert found == [["E-NEW"]]
    follower.close()
    leader.close()
    engine.dispose()


# --- the channel --------------------------------------------------------------------------------


def test_the_channel_refuses_an_oversized_message_and_reports_a_closed_end() -> None:
    ours, theirs_sock = Channel.pair()
    theirs = Channel(theirs_sock)
    with pytest.raises(ValueError, match="too large"):
        ours.send("log", "x" * MAX_MESSAGE)
    a, b = socket.socketpair()
    ours.send("serve", ("127.0.0.1", 1), 0, fd=a.fileno())
    message, fd = theirs.recv()
    assert message == ("serve", ("127.0.0.1", 1), 0) and fd is not None
    passed = socket.socket(fileno=fd)
    passed.sendall(b"ping")  # the same connection, from the descriptor that crossed
    assert b.recv(4) == b"ping"
    passed.close()
    a.close()
    b.close()
    theirs.close()
    with pytest.raises(ChannelClosed):
        ours.recv()
    with pytest.raises(ChannelClosed):
        ours.send("event", None)
    ours.close()


def test_a_handed_over_connection_counts_from_the_hand_over_to_the_child_s_ended() -> None:
    """``maximum_associations`` over both processes: a connection counts in the parent from the
    moment it is handed over — before the child has even read it — until the child says it ended;
    the child's list of open associations (status page) does not decide the count."""

    class Alive:  # the child stood in for by the test: its end of the channel
        pid = 0
        returncode = None

        def poll(self) -> None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            raise subprocess.TimeoutExpired("child", timeout or 0.0)

        def kill(self) -> None:
            pass

    ours, theirs_sock = Channel.pair()
    theirs = Channel(theirs_sock)
    process = QueryProcess(Alive(), ours)
    theirs.send("ready")
    assert process.wait_ready(5)
    a, b = socket.socketpair()
    assert process.serve(a, ("127.0.0.1", 1), 0) and process.active == 1  # nothing reported yet
    message, fd = theirs.recv()
    assert message == ("serve", ("127.0.0.1", 1), 0, 1) and fd is not None
    os.close(fd)
    theirs.send("associations", [("jobserver", ("127.0.0.1", 1))])
    theirs.send("associations", [])  # closed in the child: still counted until it has ended
    wait_until(lambda: process.open_associations() == [], 5, "the report")
    assert process.active == 1
    theirs.send("ended", 1)
    wait_until(lambda: process.active == 0, 5, "the child's ended")
    process._stopping = True  # (a closed channel below is the test's end, not a lost child)
    theirs.close()
    a.close()
    b.close()
    ours.close()


# --- `dicomproxy serve`: the priorities, the signals, a dead parent ---------------------------


def _nice(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    return int(Path(path).read_text().rsplit(")", 1)[1].split()[16])  # field 19: nice


def _child_of(pid: int) -> int:
    """serve's forked query process: its child named :data:`CHILD_NAME` (its command line is serve's)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid and (entry / "comm").read_text().strip() == CHILD_NAME:
                    return int(entry.name)
            except OSError:
                continue
    raise LookupError(f"no query process under {pid}")


def _logged(serve: Process, line: str) -> bool:
    return line in serve.log_path.read_text(errors="replace")


@pytest.fixture
def served(config: Config, tmp_path: Path) -> Iterator[tuple[Process, int]]:
    port = free_port()
    toml = tmp_path / "serve.toml"
    toml.write_text(
        f"""[proxy]
ae_title = "DICOMPROXY"
host = "127.0.0.1"
port = {port}
data_dir = "{config.data_path}"
drain_timeout = 60.0
data_path_nice = 7
[hospital]
id = "{config.hospital.id}"
[view]
url = "{config.view.url}"
name = "{config.view.name}"
[pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 1
[[peers]]
ae_title = "jobserver"
host = "127.0.0.1"
port = 1
[logging]
level = "INFO"
""",
        encoding="utf-8",
    )
    serve = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(toml)], tmp_path / "serve.log")
    try:
        for line in ("serving C-FIND/C-ECHO-only associations", "listening as DICOMPROXY"):
            wait_until(partial(_logged, serve, line), 60, line)
        yield serve, port
    finally:
        serve.stop()


def test_serve_runs_the_images_at_a_lower_priority_than_the_queries(served: tuple[Process, int]) -> None:
    serve, port = served
    child = _child_of(serve.proc.pid)
    base = os.getpriority(os.PRIO_PROCESS, 0)  # what this test runs at: what serve was started with
    assert _nice(child) == base
    threads = [int(t.name) for t in Path(f"/proc/{serve.proc.pid}/task").iterdir()]
    assert len(threads) > 3  # the server's, the events', the channel's reader, ...
    assert {_nice(serve.proc.pid, t) for t in threads} == {min(base + 7, 19)}
    with FindClient(port) as client:
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}
    log = serve.log_path.read_text(errors="replace")
    assert f"query process (pid {child}) at {base}" in log, log


def test_systemd_s_stop_signal_to_the_group_drains_both(served: tuple[Process, int]) -> None:
    """systemd (KillMode=control-group) and a terminal's Ctrl-C signal every process of the service:
    the child ignores it and is drained by its parent."""
    serve, _port = served
    child = _child_of(serve.proc.pid)
    os.kill(child, signal.SIGTERM)
    os.kill(serve.proc.pid, signal.SIGTERM)
    assert serve.proc.wait(30) == 0
    wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, "the child's end")


def test_a_second_sigterm_ends_serve_and_its_child_at_once(served: tuple[Process, int]) -> None:
    """An administrator's second Ctrl-C / ``systemctl kill`` during the drain (60 s here) with a
    C-FIND association open in the child: both processes end now, the association aborted."""
    serve, port = served
    child = _child_of(serve.proc.pid)
    with FindClient(port) as client:
        assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}
        os.kill(serve.proc.pid, signal.SIGTERM)
        wait_until(partial(_logged, serve, "stop requested: draining"), 10, "the drain")
        time.sleep(0.5)
        assert client.assoc.is_established and serve.proc.poll() is None
        os.kill(serve.proc.pid, signal.SIGTERM)
        assert serve.proc.wait(20) == 1  # not a clean drain
        wait_until(lambda: not client.assoc.is_established, 5, "the A-ABORT")
        assert client.assoc.is_aborted
    wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, "the child's end")
    assert "query process: drain timeout: aborted 1 association(s)" in serve.log_path.read_text()


def test_a_killed_parent_leaves_no_child(served: tuple[Process, int]) -> None:
    serve, _port = served
    child = _child_of(serve.proc.pid)
    serve.proc.kill()
    serve.proc.wait(10)

    def gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"  # exited; reaped by init

    wait_until(gone, 10, "the orphaned child's exit")
    log = serve.log_path.read_text(errors="replace")  # the child's stderr is serve's
    assert "Traceback" not in log and "Logging error" not in log, log


def test_a_query_answer_waits_for_no_child_start(
    config: Config, run_proxy: Callable[[Config], Server]
) -> None:
    """Until the child says it is ready, the parent serves: a C-ECHO right after start succeeds."""
    server = run_proxy(config)
    ae = AE("jobserver")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    ae.shutdown()
    assert server.queries is not None and server.queries.wait_ready(30)


def test_serve_without_the_query_process_starts_none(
    config: Config, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    for options in ({"query_process": False}, {"query_process": True, "fast_path": False}):
        server = run_proxy(make_config(proxy=options, peers=FIND_PEERS))
        assert server.queries is None, options
        with FindClient(server.port) as client:
            assert client.uids(AccessionNumber=CT.accession) == {CT.study_uid}
