"""Config validation: every error names the file and the key; the CLI prints one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomproxy.config import load_config, parse_config
from dicomproxy.errors import ConfigError
from tests.conftest import base_config_dict

GOOD = """
[proxy]
ae_title = "DICOMPROXY"
host = "0.0.0.0"
port = 11112

[hospital]
id = "74580626"
name = "温岭市第一人民医院"

[view]
url = "mssql+pyodbc://cloud:${DB_PASSWORD}@10.0.0.9/ris?driver=FreeTDS"
name = "V_IMAGE_CLOUD"
max_privacy = 0

[pacs]
ae_title = "PACS"
host = "10.0.0.5"
port = 104
retrieve = "c-move"

[compression]
mode = "none"

[[peers]]
ae_title = "jobserver"
host = "10.100.8.219"
port = 104
"""


def test_issue_example_loads_with_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "s3cret")
    path = tmp_path / "c.toml"
    path.write_text(GOOD, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.view.url == "mssql+pyodbc://cloud:s3cret@10.0.0.9/ris?driver=FreeTDS"
    assert cfg.hospital.name == "温岭市第一人民医院"
    assert cfg.peers[0].ae_title == "jobserver" and cfg.peers[0].check_host
    assert cfg.pacs.retrieve == "c-move"
    assert cfg.peer("jobserver ") is cfg.peers[0]


def test_missing_env_var_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    path = tmp_path / "c.toml"
    path.write_text(GOOD, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.toml: view: environment variable DB_PASSWORD is not set"):
        load_config(path)


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "x")
    cfg = load_config(Path(__file__).parent.parent / "conf" / "dicomproxy.example.toml")
    assert cfg.proxy.ae_title


@pytest.mark.parametrize(
    ("section", "value", "key", "problem"),
    [
        ("proxy", {"port": 70000}, "proxy.port", "between 0 and 65535"),
        ("proxy", {"port": "104"}, "proxy.port", "must be an integer"),
        ("proxy", {"ae_title": "A" * 17}, "proxy.ae_title", "not a valid AE title"),
        ("proxy", {"ae_title": "BAD\\AE"}, "proxy.ae_title", "not a valid AE title"),
        ("proxy", {"prot": 1}, "proxy.prot", "unknown key"),
        ("pacs", {"retrieve": "c-fetch"}, "pacs.retrieve", "must be one of c-move, c-get"),
        ("compression", {"mode": "zip"}, "compression.mode", "must be one of none, lossless, lossy"),
        ("view", {"max_privacy": -1}, "view.max_privacy", "must be >= 0, not -1"),
        ("reports", {"max_attempts": 0}, "reports.max_attempts", "must be >= 1, not 0"),  # no upper bound
        ("reports", {"in_retrieve": "yes"}, "reports.in_retrieve", "true or false"),
        ("hospital", {"id": ""}, "hospital.id", "must not be empty"),
        ("peers", [{"ae_title": "X", "host": "h"}], "peers[0].port", "is required"),
        (
            "peers",
            [{"ae_title": "X", "host": "h", "port": 1, "check_host": "no"}],
            "peers[0].check_host",
            "true or false",
        ),
        (
            "peers",
            [{"ae_title": "X", "host": "h", "port": 1}, {"ae_title": "X", "host": "i", "port": 2}],
            "peers[1].ae_title",
            "listed twice",
        ),
    ],
)
def test_invalid_values_name_the_key(
    tmp_path: Path, section: str, value: object, key: str, problem: str
) -> None:
    doc = base_config_dict(tmp_path, "sqlite://", **{section: value})
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "site.toml")
    assert info.value.key == key
    assert problem in str(info.value)
    assert str(info.value).startswith(f"site.toml: {key}: ")


@pytest.mark.parametrize("missing", ["hospital", "view", "pacs"])
def test_missing_section(tmp_path: Path, missing: str) -> None:
    doc = base_config_dict(tmp_path, "sqlite://")
    del doc[missing]
    with pytest.raises(ConfigError, match=rf"\[{missing}\]: section is required"):
        parse_config(doc, "site.toml")


def test_cli_bad_config_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("port = 11112", "port = 99999"), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "dicomproxy", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        env={"DB_PASSWORD": "x", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "proxy.port" in lines[0] and "bad.toml" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[proxy\nport=1", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "dicomproxy", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid TOML" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    """[logging].file, a relative SQLite [journal].url and [view].url, and data_dir: all beside
    the config file, wherever the process was started from."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "proxy.toml"
    path.write_text(
        """
[proxy]
data_dir = "var"
[hospital]
id = "74580626"
[view]
url = "sqlite:///ris/view.db"
[pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = 104
[logging]
file = "log/dicomproxy.log"
[journal]
url = "sqlite:///var/journal.db"
resume_window = 0
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.logging.file == str(folder / "log" / "dicomproxy.log")
    assert config.journal.url == f"sqlite:///{folder / 'var' / 'journal.db'}"
    assert config.view.url == f"sqlite:///{folder / 'ris' / 'view.db'}"
    assert config.data_path == folder / "var"
    assert config.journal.resume_window == 0
    # absolute paths and other databases stay as given
    text = path.read_text().replace('"sqlite:///var/journal.db"', '"sqlite:////srv/j.db"')
    path.write_text(text.replace('"log/dicomproxy.log"', '"/var/log/d.log"'), encoding="utf-8")
    config = load_config(path)
    assert (config.journal.url, config.logging.file) == ("sqlite:////srv/j.db", "/var/log/d.log")
