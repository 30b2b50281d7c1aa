"""``dicomproxy init``: prompts driven with click's runner (a wrong answer is asked again), the
``--answers`` file, the written config passing ``check-config`` against real views (SQLite, a
MariaDB user with a password) and a real pynetdicom PACS, and one run in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from dicomproxy.checks import connect_timeout_args
from dicomproxy.cli import cli
from dicomproxy.config import load_config
from dicomproxy.handover import writer
from testkit import wait_until
from testkit.fakepacs import FakePacs
from testkit.viewdb import create_view_table
from tests.conftest import MARIADB_URL, PG_URL, _need, need_server


@pytest.fixture(scope="module")
def pacs() -> Iterator[FakePacs]:
    """A real DICOM peer (pynetdicom) answering C-ECHO as the PACS."""
    server = FakePacs([], ae_title="RISPACS").start()
    yield server
    server.stop()


def _answers(pacs: FakePacs, **extra: Any) -> dict[str, Any]:
    return {
        "hospital_name": "温岭市第一人民医院",
        "hospital_id": "74580626",
        "pacs_ae": pacs.ae_title,
        "pacs_host": "127.0.0.1",
        "pacs_port": pacs.port,
        "proxy_host": "127.0.0.1",
        "cloud_host": "127.0.0.1",
        **extra,
    }


def _init(tmp: Path, *args: str, input: str | None = None) -> Result:
    files = ["-c", str(tmp / "dicomproxy.toml"), "--env-file", str(tmp / "dicomproxy.env"), "--timeout", "5"]
    return CliRunner().invoke(cli, ["init", *files, *args], input=input)


def _check_config(path: Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["check-config", "-c", str(path), "--timeout", "5"], env=env)


def _ok_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("OK ", "FAIL "))]


def test_prompts_reask_a_wrong_answer_and_the_config_passes_check_config(
    tmp_path: Path, sqlite_url: str, sqlite_view: Engine, pacs: FakePacs
) -> None:
    typed = [
        "7",  # 数据库类型: no such choice → asked again
        "5",  # SQLite
        sqlite_url.removeprefix("sqlite:///"),
        "温岭市第一人民医院",
        "745806261",  # wrong GB 11714 check character → asked again
        "74580626",
        "RIS\\PACS",  # backslash: not an AE title → asked again
        pacs.ae_title,
        "10.0.0.256",  # not an address → asked again
        "127.0.0.1",
        "70000",  # port out of range → asked again
        str(pacs.port),
        "127.0.0.1",
        "",  # our port: default 104
        pacs.ae_title,  # our AE = the PACS's → asked again
        "",  # DICOMPROXY
        "3",  # 无损
        "c-get",
        "",  # jobserver
        "127.0.0.1",
        "",  # 104
    ]
    result = _init(tmp_path, input="\n".join(typed) + "\n")
    out = result.output
    assert result.exit_code == 0, out
    for why in (
        "choose one of",
        "should end in 0",
        "not an AE title",
        "not an IP address",
        "1-65535",
        "the same as",
    ):
        assert re.search(f"Error: [^\n]*{why}", out), why
    assert out.count("医院组织机构代码 / Organisation code (as in the view):") == 2
    # config, database, columns, RowTimestamp, study UID lookup, PACS echo
    assert [line.split()[0] for line in _ok_lines(out)] == ["OK"] * 6, out
    assert "OK    study UID lookup: Study UID of ExamineID EA0001 found" in out
    assert re.search(r"DICOM 服务标识 AE title +DICOMPROXY\n", out) and "3 无损压缩" in out
    config = load_config(tmp_path / "dicomproxy.toml")
    assert (config.proxy.port, config.pacs.retrieve, config.compression.mode) == (104, "c-get", "lossless")
    assert config.view.url == sqlite_url
    assert not (tmp_path / "dicomproxy.env").exists()  # SQLite: no password, no env file
    assert (
        f"下一步 Next: `dicomproxy check-view -c {tmp_path / 'dicomproxy.toml'}`" in out
    )  # no env file to load
    again = _check_config(tmp_path / "dicomproxy.toml")
    assert again.exit_code == 0, again.output
    assert len(_ok_lines(again.output)) == 6


@pytest.fixture
def mariadb_user() -> Iterator[tuple[str, str, str, str]]:
    """A MariaDB database with an exam view and a user who may read it, whose password needs
    URL-encoding: (database, view, user, password)."""
    need_server("mariadb", MARIADB_URL)
    tag = uuid.uuid4().hex[:8]
    database, view, user, password = f"init_{tag}", "v_image_cloud", f"cloud_{tag}", "p@ss w%rd:/#'$x"
    admin = create_engine(MARIADB_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :pw"), {"pw": password})
        conn.execute(text(f"GRANT SELECT ON {database}.* TO '{user}'@'%'"))
    engine = create_engine(make_url(MARIADB_URL).set(database=database))
    create_view_table(engine, view)
    engine.dispose()
    try:
        yield database, view, user, password
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
            conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        admin.dispose()


def test_answers_file_password_only_in_the_env_file(
    tmp_path: Path, pacs: FakePacs, mariadb_user: tuple[str, str, str, str]
) -> None:
    database, view, user, password = mariadb_user
    port = make_url(MARIADB_URL).port or 3306
    answers = _answers(
        pacs,
        db_type="mariadb",
        db_host="127.0.0.1",
        db_port=port,
        db_name=database,
        db_user=user,
        db_password=password,
    )
    path = tmp_path / "answers.toml"
    path.write_text(_toml(answers), encoding="utf-8")
    path.chmod(0o644)
    result = _init(tmp_path, "--answers", str(path), "--no-prompt", "--view-name", view)
    assert result.exit_code == 0, result.output
    assert "holds the password and others may read it (chmod 600)" in result.output
    assert "OK    view database: connected (mysql)" in result.output
    toml, env = tmp_path / "dicomproxy.toml", tmp_path / "dicomproxy.env"
    assert password not in toml.read_text(encoding="utf-8")
    assert "${DB_PASSWORD}" in toml.read_text(encoding="utf-8")
    assert env.stat().st_mode & 0o777 == 0o600 and toml.stat().st_mode & 0o777 == 0o640
    # The env file, read by a shell as systemd/the package's wrapper would, lets check-config in.
    shell = f'set -a; . {shlex.quote(str(env))}; set +a; printf %s "$DB_PASSWORD"'
    value = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, check=True).stdout
    assert _check_config(toml, env={"DB_PASSWORD": value}).exit_code == 0
    denied = _check_config(toml, env={"DB_PASSWORD": "wrong"})
    assert (
        denied.exit_code == 1 and "FAIL  view database:" in denied.output and "Access denied" in denied.output
    )


def _toml(answers: dict[str, Any]) -> str:
    return "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in answers.items())


def test_answers_file_json_or_toml_write_the_same(tmp_path: Path, pacs: FakePacs) -> None:
    answers = _answers(pacs, db_type="2", db_host="ris-db", db_name="RIS", db_user="cloud", db_password="pw")
    written = []
    for form, content in (("toml", _toml(answers)), ("json", json.dumps(answers, ensure_ascii=False))):
        out = tmp_path / form
        out.mkdir()
        (out / f"answers.{form}").write_text(content, encoding="utf-8")
        result = _init(out, "--answers", str(out / f"answers.{form}"), "--no-prompt", "--no-check")
        assert result.exit_code == 0, result.output
        written.append((out / "dicomproxy.toml").read_text(encoding="utf-8"))
    assert written[0] == written[1]
    assert 'url = "oracle+oracledb://cloud:${DB_PASSWORD}@ris-db:1521/?service_name=RIS"' in written[0]


def test_flags_win_over_the_answers_file(tmp_path: Path, pacs: FakePacs) -> None:
    answers = _answers(pacs, db_type="sqlite", db_name="view.db", cloud_ae="CLOUD")
    (tmp_path / "answers.json").write_text(json.dumps(answers), encoding="utf-8")
    args = [
        "--answers",
        str(tmp_path / "answers.json"),
        "--cloud-ae",
        "jobserver2",
        "--no-prompt",
        "--no-check",
    ]
    assert _init(tmp_path, *args).exit_code == 0
    assert load_config(tmp_path / "dicomproxy.toml").peers[0].ae_title == "jobserver2"


def test_unreachable_database_is_reported_and_the_files_are_written(tmp_path: Path, pacs: FakePacs) -> None:
    answers = _answers(
        pacs, db_type="postgresql", db_host="127.0.0.1", db_port=1, db_name="ris", db_user="cloud"
    )
    args = [f"--{k.replace('_', '-')}={v}" for k, v in answers.items()]
    result = _init(tmp_path, *args, "--db-password", "secret", "--no-prompt")
    assert result.exit_code == 1, result.output
    assert "FAIL  view database: connection to server at" in result.output
    assert "OK    pacs echo" in result.output
    assert "check(s) failed: the files are written" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert (tmp_path / "dicomproxy.toml").exists()
    assert "DB_PASSWORD=secret" in (tmp_path / "dicomproxy.env").read_text().splitlines()
    env, config = tmp_path / "dicomproxy.env", tmp_path / "dicomproxy.toml"
    assert f"`set -a; . {env}; set +a; dicomproxy check-config -c {config}`" in result.output
    assert "交给影像云 For the cloud (jobserver@127.0.0.1:104)" in result.output


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a database host behind a
    firewall that lets the SYN through, or a hung server)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_silent_database_is_a_fail_after_the_timeout(
    tmp_path: Path, pacs: FakePacs, silent_server: int, kind: str
) -> None:
    """In a child process: without a connect time-out the driver waits for ever, in C, where no
    signal reaches it; ``subprocess.run``'s timeout then fails the test and kills the child."""
    answers = _answers(
        pacs, db_type=kind, db_host="127.0.0.1", db_port=silent_server, db_name="ris", db_user="u"
    )
    args = [f"--{k.replace('_', '-')}={v}" for k, v in answers.items()]
    command = [sys.executable, "-m", "dicomproxy", "init", "-c", str(tmp_path / "d.toml"), *args]
    proc = subprocess.run(
        [*command, "--db-password", "pw", "--no-prompt", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^FAIL  view database: .*(timeout|timed out)", proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.parametrize(
    ("url", "args"),
    [
        ("postgresql+psycopg2://u@h/d", {"connect_timeout": 3}),
        ("mysql+pymysql://u@h/d", {"connect_timeout": 3, "read_timeout": 3}),
        ("mssql+pyodbc://u@h/d?driver=FreeTDS", {"timeout": 3}),
        ("oracle+oracledb://u@h:1521/?service_name=S", {"tcp_connect_timeout": 2.5}),
        ("sqlite:///x.db", {}),
    ],
)
def test_connect_timeout_per_driver(url: str, args: dict[str, Any]) -> None:
    timeout = 2.5 if "oracle" in url else 3.0
    assert connect_timeout_args(make_url(url), timeout) == args


def test_existing_config_needs_force(tmp_path: Path, pacs: FakePacs, sqlite_url: str) -> None:
    config = tmp_path / "dicomproxy.toml"
    config.write_text("# mine\n")
    answers = _answers(pacs, db_type="sqlite", db_name=sqlite_url.removeprefix("sqlite:///"))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in answers.items()]
    refused = _init(tmp_path, *args, "--no-check", "--no-prompt")
    assert refused.exit_code == 2
    assert f"{config} exists; --force overwrites it" in refused.output
    assert config.read_text() == "# mine\n"
    forced = _init(tmp_path, *args, "--no-check", "--no-prompt", "--force")
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "dicomproxy.toml.bak").read_text() == "# mine\n"
    assert load_config(config).hospital.id == "74580626"


def test_no_prompt_names_the_missing_answers_and_writes_nothing(tmp_path: Path, pacs: FakePacs) -> None:
    result = _init(tmp_path, "--no-prompt", "--db-type", "oracle", "--hospital-id", "74580626-0")
    assert result.exit_code == 2
    assert (
        "init: db_host: no answer given for db_host, db_name, db_user, db_password, hospital_name"
        in result.output
    )
    assert not (tmp_path / "dicomproxy.toml").exists()
    bad = _init(tmp_path, "--no-prompt", "--hospital-id", "74580626-1")
    assert bad.exit_code == 2 and "hospital_id: 校验码错误" in bad.output


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path: Path, pacs: FakePacs) -> None:
    (tmp_path / "file").write_text("not a folder")
    answers = _answers(pacs, db_type="postgresql", db_host="db", db_name="ris", db_user="u", db_password="pw")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in answers.items()]
    config = tmp_path / "file" / "dicomproxy.toml"
    result = CliRunner().invoke(cli, ["init", "-c", str(config), *args, "--no-prompt", "--no-check"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"init: cannot write {tmp_path / 'file'}")
    assert isinstance(result.exception, SystemExit)


def test_end_of_input_aborts_and_writes_nothing(tmp_path: Path) -> None:
    result = _init(tmp_path, input="5\n")
    assert result.exit_code == 2
    assert "init: aborted, nothing written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_as_another_user_the_files_go_to_the_current_folder(
    tmp_path: Path, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DICOMPROXY_CONFIG", raising=False)
    answers = _answers(pacs, db_type="postgresql", db_host="db", db_name="ris", db_user="u", db_password="pw")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in answers.items()]
    result = CliRunner().invoke(cli, ["init", *args, "--no-prompt", "--no-check"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicomproxy.env", "dicomproxy.toml"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DB_PASSWORD", "pw")
        assert load_config(tmp_path / "dicomproxy.toml").data_path == tmp_path / "var"  # the example's


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_as_root_what_the_checks_create_goes_to_the_service_user(
    tmp_path: Path, sqlite_url: str, sqlite_view: Engine, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks build the UID side table in data_dir; run as root, the service user must own it
    (here ``nobody`` stands in for the Debian package's ``dicomproxy``)."""
    monkeypatch.setattr(writer, "SERVICE_USER", "nobody")
    nobody = pwd.getpwnam("nobody")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "mine.txt").write_text("kept as it is")
    answers = _answers(pacs, db_type="sqlite", db_name=sqlite_url.removeprefix("sqlite:///"))
    result = _init(tmp_path, *[f"--{k.replace('_', '-')}={v}" for k, v in answers.items()], "--no-prompt")
    assert result.exit_code == 0, result.output
    index = tmp_path / "var" / "uid_index.sqlite"
    assert (index.stat().st_uid, index.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert (tmp_path / "var" / "mine.txt").stat().st_uid == 0
    assert (tmp_path / "var").stat().st_uid == 0


# --- a real terminal ----------------------------------------------------------------------------


class Tmux:
    """One tmux server of our own (-L), one session running a command; the screen read back."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"dicomproxy-test-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def start(self, command: str) -> None:
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", "init", "-x", "160", "-y", "50", command)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "init")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        wait_until(lambda: text in self.screen(), timeout, f"{text!r} on the tmux screen")
        return self.screen()

    def type(self, keys: str) -> None:
        """The answer keystroke by keystroke, then Enter."""
        if keys:
            self._tmux("send-keys", "-t", "init", "-l", keys)
        self._tmux("send-keys", "-t", "init", "Enter")

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    _need("tmux")  # scripts/setup-peers.sh installs it
    term = Tmux(tmp_path)
    yield term
    term.stop()


@pytest.fixture
def pg_view() -> Iterator[str]:
    """A PostgreSQL exam view (a table of a unique name) in the test database."""
    need_server("postgresql", PG_URL)
    engine = create_engine(PG_URL)
    name = f"v_init_{uuid.uuid4().hex[:8]}"
    create_view_table(engine, name)
    yield name
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


def test_init_in_a_real_terminal(tmp_path: Path, tmux: Tmux, pacs: FakePacs, pg_view: str) -> None:
    pg = make_url(PG_URL)
    command = [
        sys.executable, "-m", "dicomproxy", "init", "-c", str(tmp_path / "dicomproxy.toml"),
        "--view-name", pg_view, "--timeout", "5",
    ]  # fmt: skip
    tmux.start(f"cd {shlex.quote(str(tmp_path))} && {shlex.join(command)}; echo EXIT=$?; sleep 60")
    password = "Secret#1"
    dialogue = [
        ("数据库类型 Database type", "3"),
        ("数据库服务器 IP", "127.0.0.1"),
        ("数据库端口 / Database port [5432]", str(pg.port or 5432)),
        ("数据库名/服务名/文件", pg.database or "test"),
        ("数据库用户名", pg.username or "postgres"),
        ("数据库密码", password),
        ("再输入一次 / Repeat", password),
        ("医院名称", "温岭市第一人民医院"),
        ("医院组织机构代码", "7458062"),  # 7 characters: asked again
        ("Error: 组织机构代码应为 8 位", "74580626"),
        ("PACS AE 标识", pacs.ae_title),
        ("PACS 服务器 IP", "127.0.0.1"),
        ("PACS 端口 / PACS port [104]", str(pacs.port)),
        ("DICOM 服务地址（本机）", "127.0.0.1"),
        ("DICOM 服务端口 / This node's port [104]", "11112"),
        ("DICOM 服务标识 / This node's AE title [DICOMPROXY]", ""),
        ("影像压缩方式", "2"),
        ("影像获取方式", ""),
        ("影像云 AE 标识 / Cloud AE title [jobserver]", ""),
        ("影像云前置机 IP", "127.0.0.1"),
        ("影像云端口 / Cloud port [104]", ""),
    ]
    for prompt, answer in dialogue:
        tmux.wait_for(prompt)
        tmux.type(answer)
    screen = tmux.wait_for("EXIT=", timeout=60)
    assert "EXIT=0" in screen, screen
    assert password not in screen  # typed without echo
    assert "OK    view database: connected (postgresql)" in screen
    assert f"OK    view columns: {pg_view}: all 78 columns" in screen
    assert "OK    pacs echo" in screen
    assert "C-MOVE 目的地 Destination" in screen and "2 有损压缩" in screen
    env = (tmp_path / "dicomproxy.env").read_text()
    assert f"DB_PASSWORD={password.replace('#', '%23')}" in env.splitlines()
    assert password not in (tmp_path / "dicomproxy.toml").read_text(encoding="utf-8")
