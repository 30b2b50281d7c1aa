"""Shared fixtures: configs, a running proxy on a free port, real Orthanc and DCMTK peers,
exam views in SQLite / PostgreSQL / MariaDB."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (see below)
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from dicomproxy.config import Config, parse_config
from dicomproxy.context import AppContext
from dicomproxy.server import Server
from dicomproxy.transport.net import Remote
from dicomproxy.view.model import exam_view_table
from testkit import free_port, wait_for_echo
from testkit.dcmtk import StoreSCP
from testkit.orthanc import DICOMWEB_PLUGIN_DIR, Orthanc
from testkit.samples import StudySpec, demo_specs, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows

# hypothesis is imported here, at start-up, and not first by its pytest plugin at the terminal summary:
# pytest rewrites the plugin's modules on import, and CPython 3.11.7's ast.parse can fail there with
# "SystemError: AST constructor recursion depth mismatch" when the garbage collector runs finalizers
# during the parse (seen after the socket-heavy push tests; exit status 1 although every test passed).


@pytest.fixture(autouse=True)
def _logger_levels() -> Iterator[None]:
    """Each test leaves the logger levels as it found them: in-process commands (``setup_logging``
    via click's runner, a reload's ``apply_log_level``) set the root logger's level, and a later
    test reading ``caplog`` then saw records it did not ask for (CI: test_commitment.py)."""
    names = ("", "dicomproxy", "pynetdicom")
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


PG_URL = os.environ.get("DICOMPROXY_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get(
    "DICOMPROXY_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
)

ConfigFactory = Callable[..., Config]


def base_config_dict(tmp: Path, view_url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A valid config document; each keyword replaces/extends one section."""
    doc: dict[str, Any] = {
        "proxy": {
            "ae_title": "DICOMPROXY",
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(tmp / "var"),
            "drain_timeout": 5.0,
            # in this process, as most tests need it (tests/test_query_process.py and the
            # `serve` subprocess tests start the query process)
            "query_process": False,
        },
        "hospital": {"id": "74580626", "name": "温岭市第一人民医院"},
        "view": {"url": view_url, "name": "V_IMAGE_CLOUD"},
        "pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1},
        "peers": [{"ae_title": "jobserver", "host": "127.0.0.1", "port": 1}],
        "http": {"port": 0},  # the console off unless a test turns it on (tests/test_console.py)
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **value}
        else:
            doc[name] = value
    return doc


class QuietHTTPHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder over HTTP without a log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real local HTTP server for order/report files: (base URL, the folder it serves)."""
    folder = tmp_path / "http"
    folder.mkdir()
    handler = functools.partial(QuietHTTPHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def push_cli_toml(tmp_path: Path, push_extra: str = "") -> Path:
    """A minimal config file with push mode on (destination CLOUD) for ``dicomproxy push`` CLI tests;
    ``push_extra``: more ``[push]`` lines."""
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        f"""
[proxy]
data_dir = "{tmp_path / "var"}"
[hospital]
id = "74580626"
[view]
url = "sqlite:///{tmp_path / "view.db"}"
[pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = 1
[[peers]]
ae_title = "CLOUD"
host = "127.0.0.1"
port = 1
[push]
enabled = true
destinations = ["CLOUD"]
{push_extra}"""
    )
    return toml


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'view.db'}"


@pytest.fixture
def make_config(tmp_path: Path, sqlite_url: str) -> ConfigFactory:
    def factory(**sections: Any) -> Config:
        return parse_config(base_config_dict(tmp_path, sqlite_url, **sections), str(tmp_path / "test.toml"))

    return factory


@pytest.fixture
def run_proxy() -> Iterator[Callable[[Config], Server]]:
    """Start a proxy for a config (port 0 → a free port) and stop it after the test."""
    from dicomproxy.app import build_context

    servers: list[Server] = []

    def start(config: Config, ctx: AppContext | None = None) -> Server:
        server = Server(config, ctx if ctx is not None else build_context(config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(drain_timeout=2.0)


@pytest.fixture
def move_proxies(make_config: ConfigFactory) -> Iterator[Any]:
    """:class:`testkit.moverig.MoveProxies` on this test's config: in-process proxies, each in
    front of a pynetdicom PACS that C-MOVEs to it; all stopped after the test."""
    from testkit.moverig import MoveProxies

    rig = MoveProxies(make_config)
    yield rig
    rig.stop()


# --- real peers ---------------------------------------------------------------------------------


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/test.sh installs it")
        pytest.skip(f"{tool} is not installed (run scripts/test.sh to install)")


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The demo studies written once per session, by accession number."""
    root = tmp_path_factory.mktemp("studies")
    return {spec.accession: write_study(spec, root / spec.accession) for spec in demo_specs()}


@contextmanager
def running_orthanc(
    workdir: Path,
    studies: Iterable[StudySpec] = (),
    files: Iterable[Path] = (),
    proxy: Remote | None = None,
    **options: Any,
) -> Iterator[Orthanc]:
    """A real Orthanc in ``workdir``/orthanc, loaded with ``studies`` (written to
    ``workdir``/studies/ACCESSION) and ``files``, with ``proxy`` as its C-MOVE destination
    ``proxy``; stopped on leaving. ``options``: :class:`Orthanc`'s (``ae_title``, ``dicomweb``,
    ``settings``, ``tls_args``). Skipped without Orthanc (failed in CI) or without the DICOMweb
    plugin ``dicomweb`` needs."""
    if options.get("dicomweb") and not list(Path(DICOMWEB_PLUGIN_DIR).glob("libOrthancDicomWeb.so*")):
        pytest.skip("the Orthanc DICOMweb plugin is not installed (scripts/setup-peers.sh installs it)")
    _need("Orthanc")
    server = Orthanc(workdir / "orthanc", **options).start()
    try:
        for spec in studies:
            server.upload(write_study(spec, workdir / "studies" / spec.accession))
        server.upload(list(files))
        if proxy is not None:
            server.add_modality("proxy", proxy)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, demo_files: dict[str, list[Path]]) -> Iterator[Orthanc]:
    """One real Orthanc per session, loaded with the demo studies. Tests must not delete them."""
    demo = [p for paths in demo_files.values() for p in paths]
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), files=demo) as server:
        yield server


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Factory: ``storescp(ae_title="DEST", syntaxes="all")`` starts a real DCMTK storescp."""
    _need("storescp")
    started: list[StoreSCP] = []

    def start(ae_title: str = "STORESCP", syntaxes: str = "all") -> StoreSCP:
        scp = StoreSCP(tmp_path / f"scp-{ae_title}-{len(started)}", ae_title, syntaxes).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def dcmtk() -> None:
    _need("echoscu")


# --- DICOM TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test PKI (PEM files): a CA; a server certificate for 127.0.0.1/localhost (``server`` =
    key + chain in one file, ``server_key``/``server_crt`` apart for DCMTK ``+tls``); a trusted
    client certificate (``client``, ``client_key``/``client_crt``); a second, untrusted CA
    (``rogue_ca``) with a client certificate (``rogue_key``/``rogue_crt``) and a server certificate
    for 127.0.0.1 (``rogue_server_key``/``rogue_server_crt``)."""
    import trustme

    d = tmp_path_factory.mktemp("pki")
    ca, rogue = trustme.CA(), trustme.CA()
    files = {
        name: d / f"{name}.pem"
        for name in (
            "ca",
            "server",
            "server_key",
            "server_crt",
            "client",
            "client_key",
            "client_crt",
            "rogue_ca",
            "rogue_key",
            "rogue_crt",
            "rogue_server_key",
            "rogue_server_crt",
        )
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    rogue.cert_pem.write_to_path(str(files["rogue_ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_crt"]))
    client = ca.issue_cert("jobserver")
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_crt"]))
    bad = rogue.issue_cert("jobserver")
    bad.private_key_pem.write_to_path(str(files["rogue_key"]))
    bad.cert_chain_pems[0].write_to_path(str(files["rogue_crt"]))
    bad_server = rogue.issue_cert("127.0.0.1", "localhost")
    bad_server.private_key_pem.write_to_path(str(files["rogue_server_key"]))
    bad_server.cert_chain_pems[0].write_to_path(str(files["rogue_server_crt"]))
    return files


# --- exam views ---------------------------------------------------------------------------------


def _reachable(url: str) -> bool:
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def need_server(kind: str, url: str) -> None:
    """Skip a test whose database server is not reachable (fail under CI=true, where
    scripts/test.sh must have started it)."""
    if not _reachable(url):
        if os.environ.get("CI"):
            pytest.fail(f"{kind} at {url} is not reachable; scripts/test.sh starts it")
        pytest.skip(f"{kind} at {url} is not reachable")


def _fresh_database(kind: str, url: str) -> Iterator[str]:
    """A database of its own on the server at ``url`` (created, yielded as a URL, dropped)."""
    need_server(kind, url)
    name = f"push_{uuid.uuid4().hex[:8]}"
    postgres = kind == "postgresql"
    admin = create_engine(url, isolation_level="AUTOCOMMIT") if postgres else create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if postgres else "")))
        admin.dispose()


@pytest.fixture
def pg_journal() -> Iterator[str]:
    """A fresh PostgreSQL database for a shared journal (several nodes, the push queue)."""
    yield from _fresh_database("postgresql", PG_URL)


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A journal several nodes can share, of each kind: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        yield request.getfixturevalue("pg_journal")


@pytest.fixture
def mariadb_journal() -> Iterator[str]:
    """A fresh MariaDB database (the journal may live there too)."""
    yield from _fresh_database("mariadb", MARIADB_URL)


@dataclass(frozen=True)
class ViewDB:
    kind: str
    url: str
    engine: Engine
    name: str


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def view_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewDB]:
    """An empty exam view (a table created without quoted names) in each real database.

    PostgreSQL/MariaDB get a uniquely named table so parallel runs don't collide; an
    unreachable server skips (fails under CI=true, where scripts/test.sh must start it).
    """
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'view.db'}"
    else:
        url = PG_URL if kind == "postgresql" else MARIADB_URL
        need_server(kind, url)
    engine = create_engine(url)
    name = f"v_test_{uuid.uuid4().hex[:8]}"
    create_view_table(engine, name)
    try:
        yield ViewDB(kind, url, engine, name)
    finally:
        exam_view_table(name).drop(engine, checkfirst=True)
        engine.dispose()


@pytest.fixture
def sqlite_view(sqlite_url: str) -> Engine:
    """The demo rows in a SQLite exam view at ``sqlite_url``."""
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec) for spec in demo_specs()])
    return engine


# --- C-FIND suites (exam view) ------------------------------------------------------------------

#: Calling AE titles with per-peer name styles (PeerConfig.name_style).
FIND_PEERS = [
    {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
    {"ae_title": "SINGLE", "host": "127.0.0.1", "port": 1, "name_style": "single"},
    {"ae_title": "PINYIN", "host": "127.0.0.1", "port": 1, "name_style": "pinyin"},
]


@pytest.fixture
def view_config(view_db: ViewDB, make_config: ConfigFactory) -> Config:
    """``view_db`` filled with tests.view_data rows, and a config pointing at it."""
    from tests.view_data import view_rows

    insert_rows(view_db.engine, view_rows(), view_db.name)
    return make_config(view={"url": view_db.url, "name": view_db.name}, peers=FIND_PEERS)


@pytest.fixture
def find_port(view_config: Config, run_proxy: Callable[[Config], Server]) -> int:
    """A running proxy answering C-FIND from ``view_config``."""
    return run_proxy(view_config).port


__all__ = ["StudySpec", "free_port", "wait_for_echo"]


# --- department test objects (testkit.samples_dept; imports kept here to keep merges simple) ---


@pytest.fixture(scope="session")
def dept_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """One study per Sysid (RIS, UIS, EIS, ECG, PIS with a small WSI) written once, by Sysid."""
    from testkit.samples_dept import DEPT_KINDS, dept_study_specs, write_dept_study

    root = tmp_path_factory.mktemp("dept-studies")
    return {DEPT_KINDS[spec.kind][0]: write_dept_study(spec, root / spec.kind) for spec in dept_study_specs()}


@pytest.fixture
def big_wsi(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``big_wsi(target_bytes=500_000_000, compressed=True)`` streams a VL Whole Slide
    Microscopy instance (PIS study) into ``tmp_path`` and returns its ``WsiInfo``; the files
    are deleted after the test. 500 MB takes a few seconds and < 100 MB of RSS."""
    from testkit.samples_dept import dept_study_specs, write_wsi

    spec = next(s for s in dept_study_specs() if s.kind == "SM")
    written: list[Path] = []

    def make(target_bytes: int = 500_000_000, compressed: bool = True, i: int = 0) -> Any:
        path = tmp_path / f"wsi-{len(written)}.dcm"
        written.append(path)
        return write_wsi(spec, path, target_bytes=target_bytes, compressed=compressed, i=i)

    yield make
    for path in written:
        path.unlink(missing_ok=True)
