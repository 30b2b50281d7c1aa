"""The operations console (issue 15): ``[http]`` config, /healthz, /readyz with real checks, /metrics
scraped from a running proxy after a real C-ECHO, C-FIND and C-GET relay (Orthanc as the PACS,
DCMTK storescp as a move destination), the bearer token, the status JSON without identifiers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.errors import ConfigError
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.findscu import run_find
from dicomproxy.transport.net import Remote, c_echo
from testkit import free_port, wait_until
from testkit.orthanc import Orthanc
from testkit.samples import demo_specs
from tests.conftest import ConfigFactory

CT, MR, US, MF = demo_specs()
TOKEN = "s3cret-token"


class Http:
    """A tiny client of the console (urllib: the test needs nothing more)."""

    def __init__(self, base: str, token: str = "") -> None:
        self.base = base
        self.token = token

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.base + path)
        token = self.token if token is None else token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(), dict(exc.headers)

    def json(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.get(path)
        return status, json.loads(body)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition: (name, sorted labels) → value (parsed by
    prometheus-client's own parser, so a malformed exposition fails here)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(all_samples: dict[Any, float], name: str, **labels: str) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http", "problem"),
    [
        ({"host": "0.0.0.0"}, "http.token"),
        ({"host": "10.1.2.3", "token": "  "}, "http.token"),
        ({"port": 70000}, "http.port"),
        ({"echo_interval": 0.1}, "http.echo_interval"),
        ({"tls": {"cert": "missing.pem"}}, "http.tls.cert"),
        ({"colour": "blue"}, "http.colour"),
    ],
)
def test_http_config_errors_name_the_key(
    make_config: ConfigFactory, http: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        make_config(http={"port": 8080, **http})


@pytest.mark.parametrize(
    "http",
    [
        {"host": "127.0.0.1"},
        {"host": "::1"},
        {"host": "localhost"},
        {"host": "0.0.0.0", "token": "t"},
        {"host": "0.0.0.0", "port": 0},  # off: no token needed
    ],
)
def test_http_config_valid(make_config: ConfigFactory, http: dict[str, Any]) -> None:
    config = make_config(http={"port": 8080, **http})
    assert config.http.host == http["host"]


def test_http_defaults() -> None:
    from dicomproxy.config import HttpConfig

    d = HttpConfig()
    assert (d.host, d.port, d.token, d.show_identifiers) == ("127.0.0.1", 8080, "", False)


# --- a running proxy ---------------------------------------------------------------------------------


@pytest.fixture
def console_proxy(
    orthanc: Orthanc,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    storescp: Callable[..., Any],
) -> tuple[Server, Http, Any]:
    dest = storescp("DEST")
    r = orthanc.remote
    config = make_config(
        pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port, "retrieve": "c-get"},
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
            # lossless: the relay converts each instance in the pool (transcode metric)
            {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port, "compression": "lossless"},
        ],
        http={"port": free_port(), "token": TOKEN, "echo_interval": 2.0},
    )
    server = run_proxy(config)
    assert server.console is not None
    return server, Http(server.console.url, TOKEN), dest


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_health_ready_metrics_after_real_traffic(console_proxy: tuple[Server, Http, Any]) -> None:
    server, http, _dest = console_proxy
    proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)

    # /healthz is open; everything else needs the token
    assert http.get("/healthz", token="")[0] == 200
    for path in ("/readyz", "/metrics", "/api/status"):
        assert http.get(path, token="")[0] == 401
        assert http.get(path, token="wrong")[0] == 401

    # /readyz: 200 once the first C-ECHO of the PACS is in; every check named
    wait_until(lambda: http.get("/readyz")[0] == 200, 30, "readiness")
    status, body = http.json("/readyz")
    assert body["ready"] is True
    assert {c["name"] for c in body["checks"]} == {"view", "pacs", "journal", "disk"}

    # real traffic: C-ECHO, C-FIND at STUDY (view) and SERIES (PACS), a C-MOVE relayed by C-GET
    assert c_echo("jobserver", proxy).ok
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = CT.patient.patient_id
    q.StudyInstanceUID = ""
    study = run_find("jobserver", proxy, "study", q)
    assert study.status == 0 and study.answers
    q2 = Dataset()
    q2.QueryRetrieveLevel = "SERIES"
    q2.StudyInstanceUID = CT.study_uid
    q2.SeriesInstanceUID = ""
    series = run_find("jobserver", proxy, "study", q2)
    assert series.status == 0 and len(series.answers) == 2
    m = Dataset()
    m.QueryRetrieveLevel = "STUDY"
    m.StudyInstanceUID = CT.study_uid
    moved = scu.move(proxy, "DEST", m, calling_ae="jobserver")
    assert (moved.status, moved.completed, moved.failed) == (0, 10, 0)
    assert not c_echo("STRANGER", proxy).ok  # rejected: calling AE not configured
    events.flush()

    status, raw, headers = http.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    s = samples(raw.decode())
    assert value(s, "dicomproxy_associations_total", peer="jobserver", result="accepted", reason="") >= 4
    assert (
        value(
            s,
            "dicomproxy_associations_total",
            peer="other",
            result="rejected",
            reason="calling_ae_not_recognized",
        )
        == 1
    )
    assert value(s, "dicomproxy_cfind_total", level="STUDY", source="view", status="success") == 1
    assert value(s, "dicomproxy_cfind_total", level="SERIES", source="pacs", status="success") == 1
    assert value(s, "dicomproxy_cfind_seconds_count", level="SERIES", source="pacs") == 1
    assert value(s, "dicomproxy_cfind_matches_total", level="SERIES", source="pacs") == 2
    assert value(s, "dicomproxy_jobs_total", kind="move", outcome="success") == 1
    converted = sum(v for (name, _), v in s.items() if name == "dicomproxy_transcode_seconds_count")
    spent = sum(v for (name, _), v in s.items() if name == "dicomproxy_transcode_seconds_sum")
    assert converted == 10 and spent > 0
    sent = sum(v for (name, _), v in s.items() if name == "dicomproxy_instances_sent_total")
    assert sent == 10
    sent_bytes = sum(v for (name, _), v in s.items() if name == "dicomproxy_sent_bytes_total")
    assert sent_bytes == server.ctx.journal.recent(1)[0]["bytes_out"] > 0
    assert value(s, "dicomproxy_jobs_running") == 0
    # the associations' threads end shortly after the release: the gauge follows them down to 0
    wait_until(
        lambda: value(samples(http.get("/metrics")[1].decode()), "dicomproxy_associations_open") == 0,
        10,
        "associations closed",
    )

    # the status JSON: the job, no patient data by default
    status, st = http.json("/api/status")
    assert status == 200
    (job,) = st["recent"]
    assert (job["kind"], job["outcome"], job["completed"], job["destination"]) == (
        "move",
        "success",
        10,
        "DEST",
    )
    text = json.dumps(st, ensure_ascii=False)
    assert CT.study_uid not in text and CT.patient.patient_id not in text and "keys" not in job


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_inline_conversions_are_in_the_transcode_metric(
    orthanc: Orthanc,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    storescp: Callable[..., Any],
) -> None:
    """``none`` mode to a destination that takes Implicit VR Little Endian only: each instance
    (held as Explicit VR LE) is converted on the pump's thread, not in the pool — and counted in
    ``dicomproxy_transcode_seconds`` like the pool's conversions."""
    dest = storescp("DEST", syntaxes="implicit")
    r = orthanc.remote
    config = make_config(
        pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port, "retrieve": "c-get"},
        peers=[
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port},
        ],
        http={"port": free_port(), "token": TOKEN},
    )
    server = run_proxy(config)
    assert server.console is not None
    m = Dataset()
    m.QueryRetrieveLevel = "STUDY"
    m.StudyInstanceUID = MR.study_uid
    moved = scu.move(Remote("DICOMPROXY", "127.0.0.1", server.port), "DEST", m, calling_ae="jobserver")
    assert (moved.status, moved.completed) == (0, 4), moved.line()
    events.flush()
    s = samples(Http(server.console.url, TOKEN).get("/metrics")[1].decode())
    implicit = "1.2.840.10008.1.2"
    assert value(s, "dicomproxy_transcode_seconds_count", transfer_syntax=implicit) == 4
    assert (
        value(s, "dicomproxy_instances_sent_total", mode="none", transfer_syntax=implicit, result="sent") == 4
    )


def test_readyz_503_names_the_failing_check(
    sqlite_view: Any, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    """No PACS listening, and a disk minimum no disk has: 503 with those checks failing."""
    config = make_config(
        pacs={"ae_title": "NOPACS", "host": "127.0.0.1", "port": free_port(), "connect_timeout": 2.0},
        http={"port": free_port(), "echo_interval": 1.0, "min_free_mb": 2**40},
    )
    server = run_proxy(config)
    http = Http(server.console.url)
    wait_until(lambda: server.console.echoer.rounds > 0, 30, "first C-ECHO round")
    status, body = http.json("/readyz")
    assert status == 503 and body["ready"] is False
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["view"]["ok"] and checks["journal"]["ok"]
    assert not checks["pacs"]["ok"] and "NOPACS" in checks["pacs"]["detail"]
    assert not checks["disk"]["ok"]


def test_console_port_in_use_keeps_dicom_serving(
    sqlite_view: Any, make_config: ConfigFactory, run_proxy: Callable[[Config], Server], caplog: Any
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        config = make_config(http={"port": busy.getsockname()[1]})
        server = run_proxy(config)
        assert server.console is None
        assert any("HTTP console not started" in r.getMessage() for r in caplog.records)
        assert c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", server.port)).ok


def test_console_off_with_port_0(
    sqlite_view: Any, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    server = run_proxy(make_config())
    assert server.console is None


def test_status_identifiers_only_when_asked() -> None:
    """The live state keeps a job's request keys, and shows them only with show_identifiers."""
    from dicomproxy.console.live import LiveState

    live = LiveState()
    peer = events.Peer("jobserver", "127.0.0.1")
    live(events.JobStarted(7, "move", peer, "DEST", {"PatientID": "P0001", "StudyInstanceUID": "1.2.3"}))
    live(events.InstanceSent(7, "sent", "1.2.840.10008.1.2.1", 1000))
    hidden, shown = live.snapshot(identifiers=False), live.snapshot(identifiers=True)
    assert "P0001" not in json.dumps(hidden) and "keys" not in hidden["running"][0]
    assert shown["running"][0]["keys"]["PatientID"] == "P0001"
    assert (hidden["running"][0]["completed"], hidden["running"][0]["bytes"]) == (1, 1000)
    assert sum(m["instances"] for m in hidden["throughput"]) == 1
    live(events.JobFinished(7, "move", "failed", 0xC002, 1, 2, 0, 1000, 1.5))
    after = live.snapshot(identifiers=False)
    assert after["running"] == [] and after["recent"][0]["outcome"] == "failed"
    assert "job 7" in after["errors"][0]["message"]


# --- readiness checks, one by one (mutation survivors of console/health.py, issue 24) -----------


class _Engine:
    """An exam view engine whose connect() fails, or blocks until released."""

    def __init__(self, fail: str = "", hold: Any = None) -> None:
        self.fail, self.hold = fail, hold

    def connect(self) -> Any:
        if self.hold is not None:
            self.hold.wait(30)
        raise _DBError(self.fail or "released")


class _DBError(Exception):
    """Like SQLAlchemy's DBAPIError: the driver's own error in ``orig``, the SQL in ``str()``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"(driver.OperationalError) {reason}\n[SQL: SELECT 1]")
        self.orig = RuntimeError(reason)


class _View:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine


def _readiness(make_config: ConfigFactory, tmp_path: Any, view: Any, **view_cfg: Any) -> Any:
    from dicomproxy.console.health import Echoer, Readiness
    from dicomproxy.relay.journal import Journal

    config = make_config(
        view={"url": f"sqlite:///{tmp_path / 'view.db'}", **view_cfg}, http={"min_free_mb": 0}
    )
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    return Readiness(config, view, journal, Echoer(config)), journal


def test_a_failing_check_is_not_ready_and_says_why(make_config: ConfigFactory, tmp_path: Any) -> None:
    from sqlalchemy import func, select

    from dicomproxy.console.health import health_probe

    readiness, journal = _readiness(make_config, tmp_path, _View(_Engine("connection refused\nmore")))
    try:
        ok, checks = readiness.run()
        by_name = {c.name: c for c in checks}
        assert not ok
        assert (by_name["view"].ok, by_name["view"].detail) == (False, "connection refused")
        assert (by_name["journal"].ok, by_name["journal"].detail) == (True, "writable")
        assert 0 <= by_name["journal"].seconds < 5
        assert by_name["pacs"].detail == "no C-ECHO yet" and not by_name["pacs"].ok
        assert by_name["disk"].as_dict()["seconds"] == 0.0  # not timed
        assert 0 <= by_name["view"].seconds < 5  # timed, also when it failed
        with journal.engine.connect() as conn:  # the journal probe leaves nothing behind
            assert conn.execute(select(func.count()).select_from(health_probe)).scalar_one() == 0
    finally:
        readiness.close()
        journal.close()


def test_a_hung_check_does_not_hold_up_the_next(make_config: ConfigFactory, tmp_path: Any) -> None:
    """The view hangs past its timeout: it is reported as such, and the journal is still checked
    (its own worker: the hung one keeps the first)."""
    import threading

    release = threading.Event()
    readiness, journal = _readiness(make_config, tmp_path, _View(_Engine(hold=release)), query_timeout=0.3)
    try:
        ok, checks = readiness.run()
        by_name = {c.name: c for c in checks}
        assert not ok
        assert (by_name["view"].ok, by_name["view"].detail) == (False, "no answer within 0.3 s")
        assert 0.3 <= by_name["view"].seconds < 5
        assert (by_name["journal"].ok, by_name["journal"].detail) == (True, "writable")
        assert by_name["journal"].seconds < 5
    finally:
        release.set()
        readiness.close()
        journal.close()


def test_disk_check_threshold_detail_and_missing_folder(
    make_config: ConfigFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    from dicomproxy.console import health

    usage = namedtuple("usage", "total used free")
    readiness, journal = _readiness(make_config, tmp_path, None)
    config = make_config(http={"min_free_mb": 100})
    readiness.config = config
    need = 100 * 1024 * 1024
    try:
        ok, checks = readiness.run()
        assert not ok and checks[0] == health.Check("view", False, "exam view not configured")
        readiness.journal = None
        assert health.Check("journal", False, "journal not configured") in readiness.run()[1]
        monkeypatch.setattr(health.shutil, "disk_usage", lambda _: usage(0, 0, need))
        check = readiness._disk()
        assert check.ok and check.detail == f"0.1 GiB free at {config.data_path} (minimum 100 MiB)"
        monkeypatch.setattr(health.shutil, "disk_usage", lambda _: usage(0, 0, need - 1))
        assert not readiness._disk().ok
        monkeypatch.setattr(health.shutil, "disk_usage", lambda _: usage(0, 0, 100 * 1024**3))
        assert readiness._disk().detail.startswith("100.0 GiB free at ")

        def gone(_: Any) -> Any:
            raise FileNotFoundError(2, "No such file or directory")

        monkeypatch.setattr(health.shutil, "disk_usage", gone)
        assert readiness._disk() == health.Check(
            "disk", False, f"{config.data_path}: No such file or directory"
        )
    finally:
        readiness.close()
        journal.close()


def test_echo_rounds_are_counted(make_config: ConfigFactory) -> None:
    from dicomproxy.console.health import Check, Echoer

    nobody = {"host": "127.0.0.1", "port": free_port()}
    echoer = Echoer(
        make_config(pacs={"ae_title": "NOBODY", **nobody}, peers=[{"ae_title": "CLOUD", **nobody}])
    )
    assert echoer.rounds == 0 and echoer.checks()[0].detail == "no C-ECHO yet"
    failures: list[events.Event] = []
    events.subscribe(failures.append)
    try:
        echoer.echo_all()
        assert events.flush()
    finally:
        events.unsubscribe(failures.append)
    assert echoer.rounds == 1
    assert [e.where for e in failures if isinstance(e, events.Failure)] == ["pacs"]  # the console counts it
    (peer,) = echoer.peer_checks()  # the status page shows the peers too
    assert (peer.name, peer.ok) == ("peer:CLOUD", False)
    (pacs,) = echoer.checks()
    assert pacs.name == "pacs" and not pacs.ok
    # a result older than two intervals and a connect timeout is stale: not ready, and says so
    when = echoer._results["pacs"][0]
    echoer._results["pacs"] = (when - 2 * echoer.interval - 15, True, "answered")
    (stale,) = echoer.checks()
    echoer._results["pacs"] = (when - echoer.interval - 15, True, "answered")
    assert echoer.checks()[0].ok  # older than one interval, within two and a timeout: still fresh
    echoer._results["pacs"] = (when - 2 * echoer.interval - 15, True, "answered")
    # every archive has its check, echoed or not
    from tests.test_routing import ARCHIVES

    more = Echoer(make_config(archives=ARCHIVES, peers=[]))
    assert [c.name for c in more.checks()] == ["pacs", *(f"archive:{a['name']}" for a in ARCHIVES)]
    assert {c.detail for c in more.checks()} == {"no C-ECHO yet"}
    assert not stale.ok and stale.detail.startswith("last C-ECHO ") and "interval 30 s" in stale.detail
    assert Check("x", True, "", 0.12345).as_dict() == {
        "name": "x",
        "ok": True,
        "detail": "",
        "seconds": 0.123,
    }
    echoer.stop()  # never started: nothing to join
    started = Echoer(make_config(http={"echo_interval": 1.0}))
    started.start()
    wait_until(lambda: started.rounds > 1, 30, "a second round, one interval later")
    started.stop()  # joins its thread
    assert started._thread is not None and not started._thread.is_alive()


def test_echo_timeouts_and_the_freshness_boundary(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each C-ECHO waits at most its archive's connect timeout (a peer's: 10 s), never more than
    one interval; a result is fresh up to exactly two intervals and a connect timeout."""
    from dicomproxy.console import health
    from dicomproxy.transport.net import EchoResult

    asked: dict[str, float] = {}

    def echo(_ae: str, remote: Remote, timeout: float, tls_args: Any = None) -> EchoResult:
        asked[remote.ae_title] = timeout
        return EchoResult(True, "answered")

    monkeypatch.setattr(health, "c_echo", echo)
    now = [1000.0]
    nobody = {"host": "127.0.0.1", "port": free_port()}
    config = make_config(
        pacs={"ae_title": "PACS", "connect_timeout": 12, **nobody},
        peers=[{"ae_title": "CLOUD", **nobody}],
        http={"echo_interval": 30.0},
    )
    echoer = health.Echoer(config, clock=lambda: now[0])
    echoer.echo_all()
    assert asked == {"PACS": 12.0, "CLOUD": 10.0}
    now[0] += 2 * 30 + 12  # exactly two intervals and the connect timeout: still fresh
    assert [c.ok for c in echoer.checks()] == [True]
    now[0] += 0.001
    (stale,) = echoer.checks()
    assert not stale.ok and stale.detail == "last C-ECHO 72 s ago (interval 30 s)"
    short = health.Echoer(
        make_config(
            pacs={"ae_title": "PACS", "connect_timeout": 12, **nobody},
            peers=[{"ae_title": "CLOUD", **nobody}],
            http={"echo_interval": 4.0},
        )
    )
    asked.clear()
    short.echo_all()
    assert asked == {"PACS": 4.0, "CLOUD": 4.0}  # never longer than one interval


def test_stop_waits_for_an_echo_in_progress(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stop`` waits for a C-ECHO in progress — up to the longest connect timeout and 5 s — and
    the echo thread is a daemon (a process that never calls stop still exits)."""
    import threading

    from dicomproxy.console import health
    from dicomproxy.transport.net import EchoResult

    started, release = threading.Event(), threading.Event()

    def echo(_ae: str, _remote: Remote, timeout: float, tls_args: Any = None) -> EchoResult:
        started.set()
        release.wait(30)
        return EchoResult(True, "answered")

    monkeypatch.setattr(health, "c_echo", echo)
    nobody = {"host": "127.0.0.1", "port": free_port()}
    from tests.test_routing import ARCHIVES

    echoer = health.Echoer(make_config(pacs={"connect_timeout": 3, **nobody}, archives=ARCHIVES, peers=[]))
    echoer.start()
    thread = echoer._thread
    assert thread is not None and thread.daemon
    assert started.wait(10)
    joined: list[float | None] = []
    join = thread.join

    def recorded(timeout: float | None = None) -> None:
        joined.append(timeout)
        threading.Timer(0.2, release.set).start()  # the echo in progress ends while stop waits
        join(timeout)

    monkeypatch.setattr(thread, "join", recorded)
    echoer.stop()
    longest = max(a.connect_timeout for a in echoer.config.all_archives)
    assert joined == [longest + 5]
    assert not thread.is_alive()  # it waited for the echo, which then saw the stop


def test_hung_checks_keep_two_threads_and_close_does_not_wait(
    make_config: ConfigFactory, tmp_path: Any
) -> None:
    """Hung view checks hold at most two threads whatever the number of /readyz; closing does not
    wait for them, and a check still queued never runs."""
    import threading

    release = threading.Event()
    ran: list[str] = []

    class _Hanging(_Engine):
        def connect(self) -> Any:
            ran.append("view")
            return super().connect()

    readiness, journal = _readiness(make_config, tmp_path, _View(_Hanging(hold=release)), query_timeout=0.1)
    readiness.journal = None  # only the view's checks take threads
    journal.close()
    before = set(threading.enumerate())
    try:
        for _ in range(3):
            (view, *_rest) = readiness.run()[1]
            assert view.detail == "no answer within 0.1 s"
        workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("readyz")]
        assert len(workers) == 2 and ran == ["view", "view"]  # the third waits in the queue
        closer = threading.Thread(target=readiness.close)
        closer.start()
        closer.join(5)
        assert not closer.is_alive(), "close() waited for the hung checks"
    finally:
        release.set()
    for t in workers:
        t.join(10)
    assert ran == ["view", "view"]  # the queued third was cancelled, never run


def test_journal_check_waits_ten_seconds(
    make_config: ConfigFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's write probe is given 10 s (the view its ``query_timeout``)."""
    readiness, journal = _readiness(make_config, tmp_path, _View(_Engine("down")), query_timeout=7)
    given: dict[str, float] = {}
    timed = readiness._timed

    def recorded(name: str, timeout: float, fn: Any) -> Any:
        given[name] = timeout
        return timed(name, timeout, fn)

    monkeypatch.setattr(readiness, "_timed", recorded)
    try:
        readiness.run()
        assert given == {"view": 7, "journal": 10.0}
    finally:
        readiness.close()
        journal.close()
