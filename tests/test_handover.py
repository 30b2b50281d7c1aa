"""``dicomproxy.handover``: each answer's parser, the org code check digits, the view URL, the
config rendered from the example and the env file (units; the CLI is in test_init_cli.py)."""

from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from dicomproxy.config import parse_config
from dicomproxy.handover import database as db
from dicomproxy.handover import fields
from dicomproxy.handover.answers import KEYS, AnswerError, collect
from dicomproxy.handover.orgcode import check_character, validate_org_code
from dicomproxy.handover.table import handover_table
from dicomproxy.handover.writer import PACKAGE_LAYOUT, env_text, example_text, render_config, write_env

REPO = Path(__file__).resolve().parents[1]

ANSWERS: dict[str, Any] = {
    "db_type": "1",
    "db_host": "10.0.0.9",
    "db_name": "ris",
    "db_user": "cloud",
    "db_password": "p@ss w%rd:/#",
    "hospital_name": "温岭市第一人民医院",
    "hospital_id": "74580626",
    "pacs_ae": "PACS",
    "pacs_host": "10.0.0.5",
    "proxy_host": "10.0.0.20",
    "cloud_host": "10.100.8.219",
}

# --- 组织机构代码 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ("74580626", "0"),  # the seed's HospitalID: Σ = 242 = 22·11 → 11 → "0"
        ("D2143569", "X"),  # GB 11714-1997's own example: D2143569-X
        ("60003734", "1"),  # inside the USCC 91110000600037341L (python-stdnum's example)
        ("M000100Y", "4"),  # inside the USCC 91350100M000100Y43 (GB 32100-2015's example)
    ],
)
def test_gb11714_check_character(body: str, check: str) -> None:
    assert check_character(body) == check


@pytest.mark.parametrize(
    "code", ["74580626", "745806260", "74580626-0", "D2143569-X", "91110000600037341L", "91350100M000100Y43"]
)
def test_org_code_forms_accepted_as_typed(code: str) -> None:
    assert validate_org_code(f" {code} ") == code


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("745806261", "should end in 0"),
        ("74580626X", "should end in 0"),
        ("D2143569-0", "should end in X"),
        ("d2143569x", "capital letters"),
        ("91110000600037341M", "GB 32100"),
        ("7458062", "8 characters"),
        ("", "8 characters"),
    ],
)
def test_org_code_refused(code: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_org_code(code)


_ORG = string.digits + string.ascii_uppercase


@given(st.text(_ORG, min_size=8, max_size=8), st.sampled_from("0123456789X"))
def test_org_code_exactly_one_check_character_fits(body: str, check: str) -> None:
    ok = check == check_character(body)
    try:
        validate_org_code(body + check)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == ok


# --- hosts, ports, AE titles --------------------------------------------------------------------


@given(st.ip_addresses().filter(lambda a: not a.is_unspecified))
def test_any_ip_address_is_a_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert fields.parse_host(f" {address} ") == str(address)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "0:0::0"])
def test_the_unspecified_address_is_no_host(host: str) -> None:
    with pytest.raises(ValueError, match="another machine"):
        fields.parse_host(host)


@pytest.mark.parametrize("host", ["pacs", "pacs-01.hospital.local", "ris.example.cn."])
def test_host_names(host: str) -> None:
    assert fields.parse_host(host) == host


@pytest.mark.parametrize(
    "host", ["10.0.0.256", "1.2.3", "", "-pacs", "pacs_01", "a b", "1.2.3.4:104", "x" * 64]
)
def test_bad_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="IP"):
        fields.parse_host(host)


@given(st.integers(min_value=256, max_value=999), st.integers(0, 3))
def test_dotted_numbers_out_of_range_are_not_host_names(octet: int, where: int) -> None:
    parts = ["10", "1", "2", "3"]
    parts[where] = str(octet)
    with pytest.raises(ValueError):
        fields.parse_host(".".join(parts))


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("104", 104), (" 65535 ", 65535), (11112, 11112)])
def test_ports(text: str | int, port: int) -> None:
    assert fields.parse_port(text) == port


@pytest.mark.parametrize("text", ["0", "65536", "-1", "abc", "", "10 4"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(ValueError, match="端口"):
        fields.parse_port(text)


_AE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x5C)


@given(st.text(_AE_CHARS, min_size=1, max_size=16).filter(lambda s: s.strip()))
def test_ae_titles_of_the_default_repertoire(title: str) -> None:
    assert fields.parse_ae_title(title) == title.strip()


@given(
    st.text(_AE_CHARS, max_size=8),
    st.sampled_from(["\\", "\n", "\r", "\x1b", "\x0c", "\t", "é", "王"]),
    st.text(_AE_CHARS, max_size=7),
)
def test_ae_titles_with_forbidden_characters(before: str, bad: str, after: str) -> None:
    """PS3.5 6.2: AE has no backslash and no control characters; default repertoire only."""
    with pytest.raises(ValueError, match="AE"):
        fields.parse_ae_title(before + bad + after)


@pytest.mark.parametrize("title", ["", "    ", "A" * 17])
def test_ae_titles_empty_blank_or_long(title: str) -> None:
    with pytest.raises(ValueError, match="AE"):
        fields.parse_ae_title(title)


# --- choices ------------------------------------------------------------------------------------


def test_compression_numbers_are_the_documents() -> None:
    """接口文档第 3 节: 1、不压缩（原图），2、有损压缩，3、无损压缩."""
    assert [fields.parse_compression(n) for n in "123"] == ["none", "lossy", "lossless"]
    assert fields.parse_compression(" Lossless ") == "lossless"
    with pytest.raises(ValueError):
        fields.parse_compression("4")


@pytest.mark.parametrize(
    ("text", "value"), [("C-MOVE", "c-move"), ("c-get", "c-get"), ("CGET", "c-get"), ("move", "c-move")]
)
def test_retrieve(text: str, value: str) -> None:
    assert fields.parse_retrieve(text) == value


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1", "sqlserver"),
        ("SQL Server", "sqlserver"),
        ("mssql", "sqlserver"),
        ("2", "oracle"),
        ("5", "sqlite"),
    ],
)
def test_db_types(text: str, kind: str) -> None:
    assert db.parse_db_type(text) == kind


def test_db_type_refused() -> None:
    with pytest.raises(ValueError, match="1=SQL Server"):
        db.parse_db_type("6")


# --- the view URL and the env file --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "dialect", "database", "query"),
    [
        ("sqlserver", "mssql+pyodbc", "ris", {"driver": "FreeTDS", "ClientCharset": "UTF-8"}),
        ("oracle", "oracle+oracledb", "", {"service_name": "ris"}),
        ("postgresql", "postgresql+psycopg2", "ris", {}),
        ("mariadb", "mysql+pymysql", "ris", {"charset": "utf8mb4"}),
    ],
)
@settings(deadline=None)  # the first example imports the dialect
@given(password=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), min_size=1))
def test_url_gives_the_password_back_exactly(
    kind: str, dialect: str, database: str, query: dict[str, str], password: str
) -> None:
    """The env file's (URL-encoded) value substituted for ${DB_PASSWORD}, as the config reader
    does, parses back to the very password typed — '@', '%', '/', ':' included."""
    url = db.Database(kind, "ris", "10.0.0.9", 1433, "u@ser").url()
    assert "${DB_PASSWORD}" in url
    parsed = make_url(url.replace("${DB_PASSWORD}", db.env_value(password)))
    assert (parsed.drivername, parsed.username, parsed.password) == (dialect, "u@ser", password)
    assert (parsed.host, parsed.port, parsed.database) == ("10.0.0.9", 1433, database)
    assert query.items() <= dict(parsed.query).items()
    assert re.fullmatch(r"[A-Za-z0-9%._~-]+", db.env_value(password))  # no quoting needed in the env file


def test_env_file_keeps_other_lines(tmp_path: Path) -> None:
    """The Debian package's env file: DB_PASSWORD= replaced, the console token kept."""
    packaged = "# Secrets ...\nDB_PASSWORD=\nDICOMPROXY_HTTP_TOKEN=abc\n"
    text = env_text(packaged, "DB_PASSWORD", "s%40cret")
    assert text.splitlines()[-2:] == ["DB_PASSWORD=s%40cret", "DICOMPROXY_HTTP_TOKEN=abc"]
    assert text.count("DB_PASSWORD=") == 1
    assert env_text(text, "DB_PASSWORD", "x").count("DB_PASSWORD=") == 1
    path = tmp_path / "sub" / "dicomproxy.env"
    write_env(path, "p@ss")
    assert path.stat().st_mode & 0o777 == 0o600
    assert "DB_PASSWORD=p%40ss" in path.read_text().splitlines()


# --- collecting answers ------------------------------------------------------------------------


def test_collect_fills_defaults() -> None:
    answers = collect(ANSWERS)
    assert answers.database == db.Database("sqlserver", "ris", "10.0.0.9", 1433, "cloud")
    assert (answers.cloud.ae_title, answers.cloud.port, answers.pacs.port) == ("jobserver", 104, 104)
    assert (answers.proxy.ae_title, answers.compression, answers.retrieve) == ("DICOMPROXY", "none", "c-move")


def test_collect_names_every_missing_answer() -> None:
    given = {k: v for k, v in ANSWERS.items() if k not in ("pacs_host", "cloud_host")}
    with pytest.raises(AnswerError, match="no answer given for pacs_host, cloud_host"):
        collect(given)


def test_collect_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(AnswerError, match="db_hots: unknown question"):
        collect({**ANSWERS, "db_hots": "x"})
    with pytest.raises(AnswerError, match=r"pacs_port: .*65536"):
        collect({**ANSWERS, "pacs_port": 65536})
    with pytest.raises(AnswerError, match=r"cloud_ae: .*the same as proxy_ae"):
        collect({**ANSWERS, "cloud_ae": "DICOMPROXY"})


def test_sqlite_asks_no_server_questions(tmp_path: Path) -> None:
    answers = collect(
        {**ANSWERS, "db_type": "sqlite", "db_name": str(tmp_path / "v.db"), "db_host": "bad host"}
    )
    assert answers.database.url() == f"sqlite:///{tmp_path / 'v.db'}"
    assert answers.password == ""


def test_questions_follow_the_document() -> None:
    assert KEYS[:8] == (
        "db_type", "db_host", "db_port", "db_name", "db_user", "db_password", "hospital_name", "hospital_id",
    )  # fmt: skip


# --- the config ---------------------------------------------------------------------------------


def test_example_is_shipped_in_the_package() -> None:
    assert example_text() == (REPO / "conf" / "dicomproxy.example.toml").read_text(encoding="utf-8")


def test_rendered_config_loads_with_the_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", db.env_value(ANSWERS["db_password"]))
    answers = collect({**ANSWERS, "compression": "2", "retrieve": "C-GET", "cloud_ae": "CLOUD"})
    text = render_config(answers, example_text(), view_name="ris.V_CLOUD")
    assert ANSWERS["db_password"] not in text and "p%40ss" not in text
    config = parse_config(tomlkit.parse(text).unwrap(), str(tmp_path / "dicomproxy.toml"))
    assert make_url(config.view.url).password == ANSWERS["db_password"]
    assert (config.view.name, config.hospital.id, config.hospital.name) == (
        "ris.V_CLOUD",
        "74580626",
        "温岭市第一人民医院",
    )
    assert (config.pacs.ae_title, config.pacs.host, config.pacs.port, config.pacs.retrieve) == (
        "PACS", "10.0.0.5", 104, "c-get",
    )  # fmt: skip
    assert (config.proxy.ae_title, config.proxy.host, config.proxy.port) == ("DICOMPROXY", "0.0.0.0", 104)
    assert config.compression.mode == "lossy"
    assert [(p.ae_title, p.host, p.port) for p in config.peers] == [("CLOUD", "10.100.8.219", 104)]
    assert config.push.destinations == ("CLOUD",)
    assert config.data_path == tmp_path / "var"  # the example's data_dir, beside the config


def test_rendered_config_keeps_every_comment_and_other_default() -> None:
    """Only the hand-over keys (and, for the package, its folders) differ from the example."""
    other = {
        **ANSWERS,
        **{"db_type": "2", "db_host": "ris-db", "db_port": "1522", "db_name": "RISPDB"},
        **{"hospital_name": "某县人民医院", "hospital_id": "D2143569-X"},
        **{"pacs_ae": "GEPACS", "pacs_host": "10.0.0.6", "pacs_port": "4100", "retrieve": "c-get"},
        **{"proxy_ae": "FRONT", "proxy_port": "1104", "compression": "3"},
        **{"cloud_ae": "CLOUD", "cloud_host": "10.8.8.8", "cloud_port": "2104"},
    }
    template = example_text()
    text = render_config(collect(other), template, PACKAGE_LAYOUT)
    assert len(text.splitlines()) == len(template.splitlines())
    changed = [b for a, b in zip(template.splitlines(), text.splitlines(), strict=True) if a != b]
    assert [re.sub(r"\s+#.*", "", line) for line in changed] == [
        'ae_title = "FRONT"',
        'host = "0.0.0.0"',
        "port = 1104",
        'data_dir = "/var/lib/dicomproxy"',
        'id = "D2143569-X"',
        'name = "某县人民医院"',
        'url = "oracle+oracledb://cloud:${DB_PASSWORD}@ris-db:1522/?service_name=RISPDB"',
        'ae_title = "GEPACS"',
        'host = "10.0.0.6"',
        "port = 4100",
        'retrieve = "c-get"',
        'mode = "lossless"',
        'ae_title = "CLOUD"',
        'host = "10.8.8.8"',
        "port = 2104",
        'file = "/var/log/dicomproxy/dicomproxy.log"',
        'destinations = ["CLOUD"]',
    ]
    kept = [line for line in changed if "#" in line and "交接" not in line]
    assert all(line.split("#", 1)[1] in template for line in kept)  # each key's explanation kept
    assert 'ae_title = "FRONT"            # our AE title' in text  # ... in its column
    assert 'host = "0.0.0.0"              # listen on every address; 交接 handed over as 10.0.0.20' in text


def test_table_has_every_hand_over_item() -> None:
    table = handover_table(collect({**ANSWERS, "compression": "3"}))
    for item in (
        "数据库类型",
        "数据库服务器 IP",
        "数据库用户名",
        "数据库密码",
        "医院名称",
        "医院组织机构代码",
    ):
        assert item in table
    assert "DICOM 服务地址 Address           10.0.0.20" in table
    assert "3 无损压缩" in table and "C-MOVE 目的地" in table
    assert ANSWERS["db_password"] not in table
