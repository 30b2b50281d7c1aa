"""The reload diff (dicomproxy.config.reloadable): which keys changed, which apply at once, and
the config a reload makes current (restart-only keys keep their running values)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dicomproxy.config import Config, parse_config
from dicomproxy.config.holder import Settings
from dicomproxy.config.reloadable import changed_keys, is_reloadable, plan_reload
from dicomproxy.errors import ConfigError
from tests.conftest import base_config_dict

PEER = {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1}


def config(tmp: Path, **sections: Any) -> Config:
    return parse_config(base_config_dict(tmp, "sqlite://", **sections), str(tmp / "site.toml"))


def test_an_unchanged_file_changes_nothing(tmp_path: Path) -> None:
    running = config(tmp_path)
    plan = plan_reload(running, config(tmp_path))
    assert changed_keys(running, config(tmp_path)) == []
    assert (plan.changed, plan.restart) == ((), ())
    assert plan.applied == running


def test_keys_are_named_as_in_the_file(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(
        tmp_path,
        proxy={"port": 11113, "data_dir": str(tmp_path / "elsewhere")},
        compression={"mode": "lossless"},
        peers=[{**PEER, "compression": "lossy"}, {"ae_title": "NEW", "host": "127.0.0.1", "port": 2}],
        logging={"level": "DEBUG"},
        journal={"url": "sqlite:///other.db"},
    )
    assert changed_keys(old, new) == [
        "proxy.port",
        "proxy.data_dir",
        "compression.mode",
        "peers",
        "logging.level",
        "journal.url",
    ]


def test_restart_only_keys_keep_their_running_values(tmp_path: Path) -> None:
    old = config(tmp_path, proxy={"port": 11112})
    new = config(
        tmp_path,
        proxy={"port": 11113},
        compression={"mode": "lossless", "workers": 3},
        peers=[{**PEER, "services": ["echo"]}, {"ae_title": "NEW", "host": "127.0.0.1", "port": 2}],
        http={"port": 0, "token": "t0ken"},
    )
    plan = plan_reload(old, new)
    assert plan.changed == ("compression.mode", "peers", "http.token")
    assert plan.restart == ("proxy.port", "compression.workers")
    applied = plan.applied
    assert applied.proxy.port == 11112 and applied.compression.workers == 0  # kept
    assert applied.compression.mode == "lossless" and applied.http.token == "t0ken"  # applied
    assert [p.ae_title for p in applied.peers] == ["jobserver", "NEW"]
    assert applied.peer("jobserver").services == ("echo",)  # type: ignore[union-attr]
    assert applied.path == new.path


@pytest.mark.parametrize(
    ("key", "reloadable"),
    [
        ("peers", True),
        ("compression.mode", True),
        ("compression.lossy_syntaxes", True),
        ("compression.workers", False),
        ("push.window", True),
        ("push.max_mbps", True),
        ("push.modalities", True),
        ("push.enabled", False),
        ("push.max_concurrent", False),
        ("http.token", True),
        ("http.auditor_token", True),
        ("http.port", False),
        ("http.host", False),
        ("logging.level", True),
        ("logging.file", False),
        ("proxy.port", False),
        ("proxy.ae_title", False),
        ("proxy.data_dir", False),
        ("journal.url", False),
        ("pacs.host", False),
        ("peersx", False),
    ],
)
def test_which_keys_a_reload_applies(key: str, reloadable: bool) -> None:
    assert is_reloadable(key) is reloadable


def test_a_token_cannot_go_while_the_console_listens_off_loopback(tmp_path: Path) -> None:
    """The new file moves the console to loopback (restart-only) and drops its token: applied
    alone, the running console on 0.0.0.0 would be open. Refused, naming the key."""
    old = config(tmp_path, http={"port": 8080, "host": "0.0.0.0", "token": "secret"})
    new = config(tmp_path, http={"port": 8080, "host": "127.0.0.1"})
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new)
    assert info.value.key == "http.token" and info.value.path == new.path


def test_settings_replace_tells_the_listeners(tmp_path: Path) -> None:
    old, new = config(tmp_path), config(tmp_path, compression={"mode": "lossy"})
    settings = Settings(old)
    seen: list[Config] = []
    settings.subscribe(seen.append)
    held = settings.current  # what a running job keeps
    assert settings.replace(new) is old
    assert settings.current is new and seen == [new]
    assert held.compression.mode == "none"


def test_reload_command_without_a_running_serve(tmp_path: Path) -> None:
    """`dicomproxy reload` finds the serve by ``<data_dir>/dicomproxy.pid``: none, or a stale one,
    is exit 1 naming the file or pid (nothing is signalled)."""
    import tomlkit
    from click.testing import CliRunner

    from dicomproxy.cli import cli

    path = tmp_path / "site.toml"
    path.write_text(tomlkit.dumps(base_config_dict(tmp_path, "sqlite://")), encoding="utf-8")
    runner = CliRunner()
    done = runner.invoke(cli, ["reload", "-c", str(path)])
    assert done.exit_code == 1 and "dicomproxy.pid" in done.output, done.output
    stale = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dicomproxy.pid").write_text(stale.stdout)
    done = runner.invoke(cli, ["reload", "-c", str(path)])
    assert done.exit_code == 1 and f"pid {stale.stdout.strip()}" in done.output, done.output
