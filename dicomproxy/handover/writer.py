"""Writing the answers: the example config with the hand-over keys filled in, and the env file.

The config is the example shipped with the package (``example.toml``, the repository's
``conf/dicomproxy.example.toml``) edited with tomlkit, which keeps its comments and layout: every
other key keeps its documented default and the explanation beside it. (tomli-w or a hand-made
template would lose the comments or copy the example; a text substitution breaks silently when
the example changes.) The password goes to the env file only, as ``DB_PASSWORD=…`` (mode 0600);
the TOML names it as ``${DB_PASSWORD}``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Item, Table

from dicomproxy.handover.answers import Answers
from dicomproxy.handover.database import PASSWORD_VAR, env_value

#: The Debian package's service user, and its group: it reads the config (0640 root:dicomproxy)
#: and owns data_dir.
SERVICE_USER = "dicomproxy"
SERVICE_GROUP = "dicomproxy"
#: The Debian package's config folder: a config written there uses :data:`PACKAGE_LAYOUT`.
PACKAGE_CONFIG_DIR = Path("/etc/dicomproxy")


@dataclass(frozen=True)
class Layout:
    """Where the node keeps its files: the example's ``var`` beside the config, or the Debian
    package's folders (``/var/lib/dicomproxy``, ``/var/log/dicomproxy``)."""

    data_dir: str | None = None
    log_file: str | None = None


PACKAGE_LAYOUT = Layout("/var/lib/dicomproxy", "/var/log/dicomproxy/dicomproxy.log")


def layout_for(config: Path) -> Layout:
    """The package's folders for a config in /etc/dicomproxy; elsewhere the example's (``var``
    beside the config, log to stderr)."""
    return PACKAGE_LAYOUT if config.absolute().parent == PACKAGE_CONFIG_DIR else Layout()


def example_text() -> str:
    """The example config shipped inside the package."""
    return files("dicomproxy.handover").joinpath("example.toml").read_text(encoding="utf-8")


def _set(table: Any, key: str, value: Any, comment: str | None = None) -> None:
    """Replace ``table[key]`` keeping its comment in the same column (or giving it ``comment``)."""
    old: Item = table.item(key)
    new = tomlkit.item(value)
    trivia = old.trivia
    pad = len(trivia.comment_ws) + len(old.as_string()) - len(new.as_string())
    new.trivia.indent = trivia.indent
    new.trivia.comment = f"# {comment}" if comment is not None else trivia.comment
    new.trivia.comment_ws = " " * max(1, pad) if new.trivia.comment else ""
    new.trivia.trail = trivia.trail
    table[key] = new


def render_config(
    answers: Answers, template: str, layout: Layout = Layout(), *, view_name: str | None = None
) -> str:
    """``template`` (the example config) with every hand-over answer in its key."""
    doc = tomlkit.parse(template)
    proxy = doc["proxy"]
    _set(proxy, "ae_title", answers.proxy.ae_title)
    _set(proxy, "host", "0.0.0.0", f"listen on every address; 交接 handed over as {answers.proxy.host}")
    _set(proxy, "port", answers.proxy.port)
    if layout.data_dir is not None:
        _set(proxy, "data_dir", layout.data_dir)
    _set(doc["hospital"], "id", answers.hospital_id)
    _set(doc["hospital"], "name", answers.hospital_name)
    _set(doc["view"], "url", answers.database.url())
    if view_name is not None:
        _set(doc["view"], "name", view_name)
    pacs = doc["pacs"]
    _set(pacs, "ae_title", answers.pacs.ae_title)
    _set(pacs, "host", answers.pacs.host)
    _set(pacs, "port", answers.pacs.port)
    _set(pacs, "retrieve", answers.retrieve)
    _set(doc["compression"], "mode", answers.compression)
    peers = doc["peers"]
    if len(peers) != 1:
        raise ValueError("the example config must have exactly one [[peers]] table (the cloud)")
    cloud: Table = peers[0]
    _set(cloud, "ae_title", answers.cloud.ae_title)
    _set(cloud, "host", answers.cloud.host)
    _set(cloud, "port", answers.cloud.port)
    _set(doc["push"], "destinations", [answers.cloud.ae_title])
    if layout.log_file is not None:
        _set(doc["logging"], "file", layout.log_file)
    return tomlkit.dumps(doc)


def _atomic_write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a temporary file of ``mode`` beside ``path``, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_config(path: Path, text: str) -> Path | None:
    """Write the config (0640; group ``dicomproxy`` when root and that group exists). An existing
    file is kept as ``FILE.bak``, which is returned."""
    backup = None
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
    _atomic_write(path, text, 0o640)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):  # no service user: not the Debian package's machine
            os.chown(path, 0, grp.getgrnam(SERVICE_GROUP).gr_gid)
    return backup


def service_ids() -> tuple[int, int] | None:
    """The service user's uid and gid when we run as root and it exists (the Debian package)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def tree(folder: Path) -> set[Path]:
    """``folder`` and everything in it (empty when it does not exist)."""
    return {folder, *folder.rglob("*")} if folder.exists() else set()


def hand_over_new_files(folder: Path, before: set[Path], ids: tuple[int, int]) -> int:
    """Give what appeared in ``folder`` since ``before`` (the checks' UID side table, made as
    root) to the service user, who must write it later; the number of paths changed."""
    new = tree(folder) - before
    for path in new:
        os.chown(path, *ids, follow_symlinks=False)
    return len(new)


def env_text(existing: str, name: str, value: str) -> str:
    """``existing`` env-file text with ``name=value`` set: its line replaced, or appended;
    every other line (other secrets, comments) kept."""
    lines = existing.splitlines()
    new = f"{name}={value}"
    for i, line in enumerate(lines):
        if line.split("=", 1)[0].strip() == name:
            lines[i] = new
            break
    else:
        i = len(lines)
        lines.append(new)
    if _ENV_NOTE not in lines:
        lines.insert(i, _ENV_NOTE)
    return "\n".join(lines) + "\n"


def write_env(path: Path, password: str) -> None:
    """Set ``DB_PASSWORD`` (URL-encoded) in the env file, created or rewritten with mode 0600."""
    existing = path.read_text(encoding="utf-8") if path.exists() else _ENV_HEADER
    _atomic_write(path, env_text(existing, PASSWORD_VAR, env_value(password)), 0o600)


_ENV_HEADER = """\
# Secrets for dicomproxy.toml, which names them as ${NAME}. Mode 0600; read by systemd
# (EnvironmentFile=) or by a shell: set -a; . ./dicomproxy.env; set +a
# 数据库密码等机密（每行 NAME=值），配置文件中以 ${NAME} 引用。
"""
_ENV_NOTE = f"# {PASSWORD_VAR}: URL-encoded (it goes into [view].url: @ → %40); written by dicomproxy init"
