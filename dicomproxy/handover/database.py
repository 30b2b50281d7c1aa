"""数据库类型: the kinds of exam-view database ``[view].url`` supports, and the URL for each.

The password never appears in the URL written to the TOML: it holds ``${DB_PASSWORD}``, which the
config reader fills from the environment (the env file beside the config). SQLAlchemy URL-decodes
the password it parses, so the env file holds it URL-encoded (``@`` → ``%40``); that also keeps the
value free of quotes, spaces and ``$`` for systemd's ``EnvironmentFile=`` and for ``sh``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

#: The environment variable the written URL names (the Debian package's env file has it too).
PASSWORD_VAR = "DB_PASSWORD"


@dataclass(frozen=True)
class DatabaseKind:
    key: str
    label: str
    default_port: int
    #: What ``db_name`` is for this kind (数据库名 / 服务名 / 文件).
    name_label: str
    #: Needs host, port, user and password (everything but SQLite).
    networked: bool = True


KINDS: tuple[DatabaseKind, ...] = (
    DatabaseKind("sqlserver", "SQL Server", 1433, "数据库名 Database name"),
    DatabaseKind("oracle", "Oracle", 1521, "服务名 Service name"),
    DatabaseKind("postgresql", "PostgreSQL", 5432, "数据库名 Database name"),
    DatabaseKind("mariadb", "MariaDB / MySQL", 3306, "数据库名 Database name"),
    DatabaseKind("sqlite", "SQLite", 0, "数据库文件 Database file", networked=False),
)
_ALIASES = {"mssql": "sqlserver", "sql server": "sqlserver", "mysql": "mariadb", "postgres": "postgresql"}


def kind_menu() -> str:
    """``1=SQL Server, 2=Oracle, ...`` for the prompt."""
    return ", ".join(f"{i}={k.label}" for i, k in enumerate(KINDS, 1))


def kind_named(key: str) -> DatabaseKind:
    return next(k for k in KINDS if k.key == key)


def parse_db_type(text: str) -> str:
    """A menu number, a kind's key or label (any case), or a common alias → the kind's key."""
    value = text.strip().lower()
    if value.isdigit() and 1 <= int(value) <= len(KINDS):
        return KINDS[int(value) - 1].key
    value = _ALIASES.get(value, value)
    for kind in KINDS:
        if value in (kind.key, kind.label.lower()):
            return kind.key
    raise ValueError(f"请选择 / choose one of {kind_menu()}; not {text!r}")


def parse_db_name(text: str) -> str:
    value = text.strip()
    if not value or any(c in value for c in "?#\n\r"):
        raise ValueError(f"数据库名无效 / {text!r} is not a database or service name")
    return value


@dataclass(frozen=True)
class Database:
    """The answers about the exam view's database (the password goes to the env file only)."""

    kind: str
    name: str
    host: str = ""
    port: int = 0
    user: str = ""

    def url(self, password_var: str = PASSWORD_VAR) -> str:
        """The ``[view].url``, naming the password as ``${password_var}``."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.name}"
        auth = f"{quote(self.user, safe='')}:${{{password_var}}}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{auth}@{host}:{self.port}"
        if self.kind == "sqlserver":
            # FreeTDS: the ODBC driver the Debian package depends on; UTF-8 for Chinese (docs/view.md).
            query = "driver=FreeTDS&TDS_Version=7.4&ClientCharset=UTF-8"
            return f"mssql+pyodbc://{where}/{quote(self.name, safe='')}?{query}"
        if self.kind == "oracle":
            return f"oracle+oracledb://{where}/?service_name={quote(self.name, safe='')}"
        if self.kind == "postgresql":
            return f"postgresql+psycopg2://{where}/{quote(self.name, safe='')}"
        return f"mysql+pymysql://{where}/{quote(self.name, safe='')}?charset=utf8mb4"

    @property
    def where(self) -> str:
        """For people: ``10.0.0.9:1433 / ris`` or the SQLite file."""
        return self.name if self.kind == "sqlite" else f"{self.host}:{self.port} / {self.name}"


def env_value(password: str) -> str:
    """The password as the env file holds it: URL-encoded (see the module docstring)."""
    return quote(password, safe="")


def sqlite_path(text: str) -> str:
    """An SQLite file named relative to the current folder, made absolute (the config resolves
    relative paths from its own folder, which may differ)."""
    return str(Path(parse_db_name(text)).expanduser().resolve())
