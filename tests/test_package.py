"""The Debian package and the offline bundle, installed as a hospital machine without network would.

Opt-in: ``scripts/test.sh --package`` (root, mmdebstrap; the network only to build the packages and,
once, the cached Debian root). ``scripts/package.sh`` builds the .deb twice (the project's version
and a newer one), the bundle and the .deb's dependencies (``--deps``). A clean minimal Debian root
(testkit.debroot) without package lists gets them with **no network** (``unshare --net`` +
``chroot``), as docs/部署指南.md 2.3 installs them: install, ``--version``, the drivers,
``dicomproxy init`` from an answers file (docs/init.md), ``check-config`` against a SQLite view
(host loopback: it echoes the PACS), ``serve`` started as the unit says (user dicomproxy, port 104
through the unit's capabilities alone) answering a C-ECHO from the host's ``echoscu``, upgrade with
config and journal kept, remove (config kept), purge (all gone).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from testkit import wait_until
from testkit.debroot import DebianRoot, root_tarball
from testkit.fakepacs import FakePacs
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import create_view_table, insert_rows

pytestmark = [
    pytest.mark.package,
    # builds and installs ~250 MB several times; minutes on a busy 2-core machine
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("DICOMPROXY_PACKAGE_TEST") != "1", reason="opt-in: scripts/test.sh --package"
    ),
]

REPO = Path(__file__).resolve().parent.parent
# Debian 12 (Python 3.11); "trixie" (Debian 13, Python 3.13) passes too
SUITE = os.environ.get("DICOMPROXY_PACKAGE_SUITE", "bookworm")
UNIT = "/lib/systemd/system/dicomproxy.service"
CONFIG = "etc/dicomproxy/dicomproxy.toml"
ENV_FILE = "etc/dicomproxy/dicomproxy.env"
JOURNAL = "var/lib/dicomproxy/journal.db"
CALL_AS_CLOUD = ("-aet", "jobserver", "-aec", "DICOMPROXY")


@dataclass(frozen=True)
class Built:
    old: Path
    new: Path
    bundle: Path
    deps: Path  # scripts/package.sh --deps SUITE: what a minimal SUITE system lacks
    old_version: str
    new_version: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, unshare)")
    for tool in ("mmdebstrap", "dpkg-deb", "unshare", "nsenter", "echoscu", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (scripts/setup.sh test package)")
    out = tmp_path_factory.mktemp("dist")
    version = re.findall(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)[0]
    newer = f"{version}.post1"
    script = str(REPO / "scripts" / "package.sh")
    subprocess.run([script, "--deps", SUITE, "--bundle", "--out", str(out)], check=True, timeout=1200)
    subprocess.run([script, "--deb", "--version", newer, "--out", str(out)], check=True, timeout=1200)
    return Built(
        old=out / f"dicomproxy_{version}-1_amd64.deb",
        new=out / f"dicomproxy_{newer}-1_amd64.deb",
        bundle=out / f"dicomproxy-{version}-offline-amd64.tar",
        deps=out / f"dicomproxy-deps-{SUITE}",
        old_version=version,
        new_version=newer,
    )


@pytest.fixture
def root(built: Built, tmp_path: Path) -> DebianRoot:
    root = DebianRoot.unpack(root_tarball(SUITE), tmp_path / "root")
    shutil.copytree(built.deps, root.path / "tmp" / "deps")
    return root


@pytest.fixture
def pacs() -> Iterator[FakePacs]:
    server = FakePacs([]).start()
    yield server
    server.stop()


def set_key(text: str, section: str, key: str, value: object) -> str:
    """``key = value`` (TOML) in the first ``[section]`` / ``[[section]]``, as an admin edits it."""
    lines = text.splitlines(keepends=True)
    inside = False
    for i, line in enumerate(lines):
        head = line.split("#")[0].strip()
        if head.startswith("["):
            inside = head in (f"[{section}]", f"[[{section}]]")
        elif inside and re.match(rf"{key}\s*=", line):
            lines[i] = f"{key} = {json.dumps(value, ensure_ascii=False)}\n"
            return "".join(lines)
    raise AssertionError(f"no {key} in [{section}] of the packaged config")


def configure(root: DebianRoot, pacs: FakePacs) -> None:
    """What the hospital's engineer does after installing: the view, the PACS, the cloud peer, port 104;
    the view's location goes through the env file (as a password would)."""
    view = root.path / "srv" / "view"
    view.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{view / 'view.db'}")
    create_view_table(engine)
    insert_rows(engine, [exam_row(StudySpec("CT", accession="PKG0001"))])
    engine.dispose()
    os.chmod(view / "view.db", 0o644)
    env_file = root.path / ENV_FILE
    env_file.write_text(env_file.read_text() + "VIEW_DB=/srv/view/view.db\n")
    config = root.path / CONFIG
    text = config.read_text(encoding="utf-8")
    for section, key, value in (
        ("proxy", "port", 104),
        ("view", "url", "sqlite:///${VIEW_DB}"),
        ("pacs", "ae_title", pacs.ae_title),
        ("pacs", "host", "127.0.0.1"),
        ("pacs", "port", pacs.port),
        ("peers", "host", "127.0.0.1"),
    ):
        text = set_key(text, section, key, value)
    config.write_text(text, encoding="utf-8")


def init_config(root: DebianRoot, pacs: FakePacs) -> None:
    """``sudo dicomproxy init --force`` over the packaged config (docs/init.md): run as root by the
    wrapper, it writes /etc/dicomproxy, its checks pass, and what they made in data_dir (the UID
    side table) belongs to the service user."""
    view = root.path / "srv" / "init-view.db"
    engine = create_engine(f"sqlite:///{view}")
    create_view_table(engine)
    engine.dispose()
    answers = {
        "db_type": "sqlite",
        "db_name": "/srv/init-view.db",
        "hospital_name": "温岭市第一人民医院",
        "hospital_id": "74580626",
        "pacs_ae": pacs.ae_title,
        "pacs_host": "127.0.0.1",
        "pacs_port": pacs.port,
        "proxy_host": "127.0.0.1",
        "cloud_host": "127.0.0.1",
    }
    (root.path / "tmp" / "answers.json").write_text(json.dumps(answers), encoding="utf-8")
    args = ("--answers", "/tmp/answers.json", "--no-prompt", "--force", "--timeout", "5")
    done = root.run("dicomproxy", "init", *args, net=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "交给影像云 For the cloud (jobserver@127.0.0.1:104)" in done.stdout
    ids = root.ids("dicomproxy")
    assert ids is not None
    st = (root.path / CONFIG).stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, ids[1])
    assert 'data_dir = "/var/lib/dicomproxy"' in (root.path / CONFIG).read_text(encoding="utf-8")
    index = (root.path / "var/lib/dicomproxy/uid_index.sqlite").stat()
    assert (index.st_uid, index.st_gid) == ids
    assert (root.path / "etc/dicomproxy/dicomproxy.toml.bak").exists()


def install(root: DebianRoot, deb: Path, *deps: str) -> str:
    """``apt-get install`` of local files only, as docs/部署指南.md 2.3 says (no package lists)."""
    shutil.copy(deb, root.path / "tmp" / deb.name)
    started = time.monotonic()
    out = root.run("apt-get", "install", "-y", "-q", *deps, f"/tmp/{deb.name}").stdout
    print(f"apt-get install {deb.name}: {time.monotonic() - started:.1f} s")  # shown with -s / -rP
    return out


def echo_104(server: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[str]:
    """The host's echoscu, in the server's network namespace, calling as the cloud's AE."""
    return subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{server.pid}/ns/net",
            "echoscu",
            "-to",
            "5",
            *CALL_AS_CLOUD,
            "127.0.0.1",
            "104",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def serve_and_echo(root: DebianRoot, log: Path) -> int:
    """Start the unit's ExecStart, C-ECHO it, reload it as its ExecReload does (SIGHUP to the main
    pid), C-ECHO it again, stop it (SIGTERM); the server process's uid."""
    server = root.start(UNIT, log)
    try:
        wait_until(lambda: server.poll() is not None or echo_104(server).returncode == 0, 60, "serve on 104")
        assert server.poll() is None, log.read_text(errors="replace")
        uid = int(Path(f"/proc/{server.pid}/status").read_text().split("\nUid:")[1].split()[0])
        assert echo_104(server).returncode == 0
        unit = (root.path / UNIT.lstrip("/")).read_text()
        assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
        result = root.path / "var/lib/dicomproxy/reload.json"
        result.unlink(missing_ok=True)
        server.send_signal(signal.SIGHUP)
        wait_until(result.exists, 30, "reload.json after SIGHUP")
        assert json.loads(result.read_text())["applied"] is True, result.read_text()
        assert "reload applied from /etc/dicomproxy/dicomproxy.toml" in log.read_text(errors="replace")
        assert server.poll() is None and echo_104(server).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=90)
    return uid


def audit_rows(root: DebianRoot) -> list[tuple[object, ...]]:
    with sqlite3.connect(root.path / JOURNAL) as db:
        return db.execute("SELECT * FROM audit_log ORDER BY 1").fetchall()


def check_drivers(root: DebianRoot) -> None:
    """SQL Server: unixODBC knows FreeTDS under the name the example URL uses, and the driver
    itself answers (a refused connection, from FreeTDS); Oracle: oracledb in thin mode."""
    python = "/opt/dicomproxy/venv/bin/python"
    assert root.run(python, "-c", "import pyodbc; print(pyodbc.drivers())").stdout.strip() == "['FreeTDS']"
    dsn = "DRIVER=FreeTDS;SERVER=127.0.0.1;PORT=1;UID=u;PWD=p"
    refused = root.run(python, "-c", f"import pyodbc; pyodbc.connect({dsn!r}, timeout=5)", check=False)
    assert "[FreeTDS][SQL Server]Unable to connect" in refused.stderr, refused.stderr
    assert root.run(python, "-c", "import oracledb; print(oracledb.is_thin_mode())").stdout.strip() == "True"


def verify_unit(root: DebianRoot) -> None:
    """``systemd-analyze verify`` on the host (the root has no systemd): the unit's syntax and its
    ExecStart, with the root's /opt/dicomproxy mounted in a private mount namespace."""
    opt = root.path / "opt" / "dicomproxy"
    unit = str(root.path / UNIT.lstrip("/"))
    mounts = f"mount -t tmpfs tmpfs /opt && mkdir /opt/dicomproxy && mount --bind {opt} /opt/dicomproxy"
    verify = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f'{mounts} && exec systemd-analyze verify "$1"', "sh", unit],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and not verify.stderr, verify.stderr


def check_layout(root: DebianRoot) -> None:
    """User, modes and owners of the installed files; no compiler came with the dependencies."""
    ids = root.ids("dicomproxy")
    assert ids is not None and ids[0] < 1000
    passwd = next(
        x for x in (root.path / "etc/passwd").read_text().splitlines() if x.startswith("dicomproxy:")
    )
    assert passwd.endswith(":/var/lib/dicomproxy:/usr/sbin/nologin")
    for rel, mode, owner in (
        (CONFIG, 0o640, (0, ids[1])),
        (ENV_FILE, 0o600, (0, 0)),
        ("var/lib/dicomproxy", 0o750, ids),
        ("var/log/dicomproxy", 0o750, ids),
    ):
        st = (root.path / rel).stat()
        assert (st.st_mode & 0o7777, (st.st_uid, st.st_gid)) == (mode, owner), rel
    assert (root.path / "opt/dicomproxy/venv").is_symlink()
    for compiler in ("gcc", "cc", "x86_64-linux-gnu-gcc-12"):
        assert not (root.path / "usr/bin" / compiler).exists()


def test_deb_installs_serves_upgrades_and_purges_without_network(
    built: Built, root: DebianRoot, pacs: FakePacs, tmp_path: Path
) -> None:
    deps = sorted(f"/tmp/deps/{deb.name}" for deb in built.deps.glob("*.deb"))
    assert "dicomproxy installed (not started)" in install(root, built.old, *deps)
    check_layout(root)
    assert root.run("dicomproxy", "--version").stdout.strip() == f"dicomproxy, version {built.old_version}"
    check_drivers(root)
    verify_unit(root)

    init_config(root, pacs)
    configure(root, pacs)
    checked = root.run("dicomproxy", "check-config", "--timeout", "5", net=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "pacs echo" in checked.stdout

    uid = serve_and_echo(root, tmp_path / "serve-1.log")
    assert uid == root.ids("dicomproxy")[0]  # type: ignore[index]
    before = audit_rows(root)
    assert before, "serve wrote no audit row into the journal"
    assert (root.path / "var/log/dicomproxy/dicomproxy.log").stat().st_uid == uid
    edited = (root.path / CONFIG).read_text(encoding="utf-8")
    old_venv = os.readlink(root.path / "opt/dicomproxy/venv")

    install(root, built.new)
    assert root.run("dicomproxy", "--version").stdout.strip() == f"dicomproxy, version {built.new_version}"
    assert os.readlink(root.path / "opt/dicomproxy/venv") != old_venv
    assert not (root.path / "opt/dicomproxy" / old_venv).exists()
    assert (root.path / CONFIG).read_text(encoding="utf-8") == edited
    assert "VIEW_DB=" in (root.path / ENV_FILE).read_text()
    assert audit_rows(root) == before
    serve_and_echo(root, tmp_path / "serve-2.log")
    after = audit_rows(root)
    assert after[: len(before)] == before and len(after) > len(before)

    root.run("apt-get", "remove", "-y", "-q", "dicomproxy")
    assert not (root.path / "usr/bin/dicomproxy").exists()
    assert not (root.path / "opt/dicomproxy").exists()
    assert (root.path / CONFIG).read_text(encoding="utf-8") == edited
    assert audit_rows(root) == after
    assert root.ids("dicomproxy") is not None

    root.run("apt-get", "purge", "-y", "-q", "dicomproxy")
    for gone in ("etc/dicomproxy", "var/lib/dicomproxy", "var/log/dicomproxy", "opt/dicomproxy"):
        assert not (root.path / gone).exists(), gone
    assert root.ids("dicomproxy") is None and not root.has_group("dicomproxy")
    assert "dicomproxy" not in root.run("dpkg-statoverride", "--list", check=False).stdout
    assert root.run("dpkg", "-s", "dicomproxy", check=False).returncode != 0


def test_offline_bundle_installs_without_network(built: Built, root: DebianRoot) -> None:
    # what the bundle needs of the system, from the .deb's dependencies: Python with venv, and for
    # SQL Server unixODBC with FreeTDS (pyodbc's wheel links libodbc.so.2)
    deps = [f"/tmp/deps/{deb.name}" for deb in built.deps.glob("*.deb")]
    root.run("apt-get", "install", "-y", "-q", *deps)
    shutil.copy(built.bundle, root.path / "tmp")
    root.run("tar", "-C", "/srv", "-xf", f"/tmp/{built.bundle.name}")
    folder = f"/srv/{built.bundle.name.removesuffix('.tar')}"
    root.run(f"{folder}/install.sh", "--prefix", "/srv/dicomproxy")
    version = root.run("/srv/dicomproxy/venv/bin/dicomproxy", "--version").stdout.strip()
    assert version == f"dicomproxy, version {built.old_version}"
    root.run("/srv/dicomproxy/venv/bin/python", "-c", "import oracledb, pyodbc, psycopg2, pymysql")
