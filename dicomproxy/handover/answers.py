"""The hand-over questions (接口文档第 3 节 对接地址需求) and the validated answers.

Each :class:`Question` has a key (the ``--answers`` file key; ``--db-host`` for ``db_host``), a
bilingual prompt, a default and a parser that sees the answers given before it (so an AE title
can be checked against the ones already chosen). :func:`collect` walks them in order: a given
answer is parsed, a missing one is asked through a callback (the CLI's prompt) or reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dicomproxy.handover import database as db
from dicomproxy.handover import fields
from dicomproxy.handover.orgcode import validate_org_code

Values = dict[str, Any]


class AnswerError(ValueError):
    """An answer that cannot be used; names the question's key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Question:
    key: str
    prompt: str
    parse: Callable[[str, Values], Any]
    #: The value offered when nothing is typed; None = an answer is required.
    default: Callable[[Values], str | None] = lambda _values: None
    #: Typed without echo and twice (the password).
    secret: bool = False
    #: Asked only when this holds for the answers so far (SQLite has no host or password).
    applies: Callable[[Values], bool] = lambda _values: True

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def _plain(parse: Callable[[str], Any]) -> Callable[[str, Values], Any]:
    return lambda text, _values: parse(text)


def _networked(values: Values) -> bool:
    return db.kind_named(values["db_type"]).networked


def _db_name(text: str, values: Values) -> str:
    return db.sqlite_path(text) if values["db_type"] == "sqlite" else db.parse_db_name(text)


def _distinct_ae(*earlier: str) -> Callable[[str, Values], str]:
    """An AE title that differs from the ones already chosen under ``earlier`` keys."""

    def parse(text: str, values: Values) -> str:
        title = fields.parse_ae_title(text)
        for key in earlier:
            if values.get(key) == title:
                raise ValueError(
                    f"与 {key} 相同 / the same as {key} ({title}); each node needs its own AE title"
                )
        return title

    return parse


def _const(value: str) -> Callable[[Values], str]:
    return lambda _values: value


QUESTIONS: tuple[Question, ...] = (
    Question(
        "db_type", f"数据库类型 Database type ({db.kind_menu()})", _plain(db.parse_db_type), _const("1")
    ),
    Question(
        "db_host", "数据库服务器 IP / Database server address", _plain(fields.parse_host), applies=_networked
    ),
    Question(
        "db_port",
        "数据库端口 / Database port",
        _plain(fields.parse_port),
        lambda v: str(db.kind_named(v["db_type"]).default_port),
        applies=_networked,
    ),
    Question("db_name", "数据库名/服务名/文件 / Database name, Oracle service name or SQLite file", _db_name),
    Question("db_user", "数据库用户名 / Database user", _plain(fields.parse_text), applies=_networked),
    Question(
        "db_password",
        "数据库密码 / Database password",
        _plain(fields.parse_secret),
        secret=True,
        applies=_networked,
    ),
    Question("hospital_name", "医院名称 / Hospital name (as in the view)", _plain(fields.parse_text)),
    Question(
        "hospital_id", "医院组织机构代码 / Organisation code (as in the view)", _plain(validate_org_code)
    ),
    Question("pacs_ae", "PACS AE 标识 / PACS AE title", _plain(fields.parse_ae_title)),
    Question("pacs_host", "PACS 服务器 IP / PACS address", _plain(fields.parse_host)),
    Question("pacs_port", "PACS 端口 / PACS port", _plain(fields.parse_port), _const("104")),
    Question(
        "proxy_host",
        "DICOM 服务地址（本机）/ This node's address, as the cloud reaches it",
        _plain(fields.parse_host),
    ),
    Question("proxy_port", "DICOM 服务端口 / This node's port", _plain(fields.parse_port), _const("104")),
    Question(
        "proxy_ae", "DICOM 服务标识 / This node's AE title", _distinct_ae("pacs_ae"), _const("DICOMPROXY")
    ),
    Question(
        "compression",
        "影像压缩方式 Compression (1=不压缩 none, 2=有损 lossy, 3=无损 lossless)",
        _plain(fields.parse_compression),
        _const("1"),
    ),
    Question(
        "retrieve",
        "影像获取方式 Retrieval from the PACS (C-MOVE / C-GET)",
        _plain(fields.parse_retrieve),
        _const("C-MOVE"),
    ),
    Question(
        "cloud_ae",
        "影像云 AE 标识 / Cloud AE title",
        _distinct_ae("pacs_ae", "proxy_ae"),
        _const("jobserver"),
    ),
    Question("cloud_host", "影像云前置机 IP / Cloud address", _plain(fields.parse_host)),
    Question("cloud_port", "影像云端口 / Cloud port", _plain(fields.parse_port), _const("104")),
)
KEYS = tuple(q.key for q in QUESTIONS)


@dataclass(frozen=True)
class Endpoint:
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Answers:
    database: db.Database
    #: Empty for SQLite (no password); goes to the env file only.
    password: str
    hospital_name: str
    hospital_id: str
    pacs: Endpoint
    proxy: Endpoint
    cloud: Endpoint
    compression: str
    retrieve: str

    @classmethod
    def from_values(cls, v: Values) -> Answers:
        return cls(
            database=db.Database(
                v["db_type"], v["db_name"], v.get("db_host", ""), v.get("db_port", 0), v.get("db_user", "")
            ),
            password=v.get("db_password", ""),
            hospital_name=v["hospital_name"],
            hospital_id=v["hospital_id"],
            pacs=Endpoint(v["pacs_ae"], v["pacs_host"], v["pacs_port"]),
            proxy=Endpoint(v["proxy_ae"], v["proxy_host"], v["proxy_port"]),
            cloud=Endpoint(v["cloud_ae"], v["cloud_host"], v["cloud_port"]),
            compression=v["compression"],
            retrieve=v["retrieve"],
        )


#: Asks one question: (question, default text or None, the answers so far) → the parsed value.
Ask = Callable[[Question, "str | None", Values], Any]


def collect(given: Mapping[str, Any], ask: Ask | None = None) -> Answers:
    """Parse the ``given`` answers and ask the others (in the document's order); without ``ask``,
    a missing answer without default is an :class:`AnswerError` listing every one missing."""
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise AnswerError(unknown[0], f"unknown question; known: {', '.join(KEYS)}")
    values: Values = {}
    missing: list[str] = []
    for question in QUESTIONS:
        if not question.applies(values):
            continue
        default = question.default(values)
        if question.key in given and given[question.key] is not None:
            text = str(given[question.key])
        elif ask is not None:
            values[question.key] = ask(question, default, values)
            continue
        elif default is not None:
            text = default
        else:
            missing.append(question.key)
            continue
        try:
            values[question.key] = question.parse(text, values)
        except ValueError as exc:
            raise AnswerError(question.key, str(exc)) from None
    if missing:
        raise AnswerError(missing[0], f"no answer given for {', '.join(missing)}")
    return Answers.from_values(values)
