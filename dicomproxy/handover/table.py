"""The table ``init`` prints at the end: what to hand to the cloud (接口文档第 3 节, filled in) and
what the PACS administrator must set up (this node as a C-MOVE destination, PS3.4 C.4.2)."""

from __future__ import annotations

import unicodedata

from dicomproxy.handover.answers import Answers
from dicomproxy.handover.database import kind_named
from dicomproxy.handover.fields import COMPRESSION_LABELS

Rows = list[tuple[str, str]]


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _block(title: str, rows: Rows) -> list[str]:
    wide = max(_width(label) for label, _ in rows)
    return [title] + [f"  {label}{' ' * (wide - _width(label))}  {value}" for label, value in rows]


def cloud_rows(a: Answers) -> Rows:
    """The interface document's section 3, in its order."""
    rows: Rows = [("数据库类型 Database type", kind_named(a.database.kind).label)]
    if kind_named(a.database.kind).networked:
        rows += [
            ("数据库服务器 IP / 端口 Database", f"{a.database.host}:{a.database.port}"),
            ("数据库名/服务名 Name", a.database.name),
            ("数据库用户名 User", a.database.user),
            ("数据库密码 Password", "（另行告知 given separately）"),
        ]
    else:
        rows.append(("数据库文件 Database file", a.database.name))
    return [
        *rows,
        ("医院名称 Hospital", a.hospital_name),
        ("医院组织机构代码 Org code", a.hospital_id),
        ("DICOM 服务地址 Address", a.proxy.host),
        ("DICOM 服务端口 Port", str(a.proxy.port)),
        ("DICOM 服务标识 AE title", a.proxy.ae_title),
        ("影像压缩方式 Compression", COMPRESSION_LABELS[a.compression]),
        ("影像获取方式 Retrieval", "C-MOVE" if a.retrieve == "c-move" else "C-GET"),
    ]


def pacs_rows(a: Answers) -> Rows:
    rows: Rows = [
        ("本节点 AE This node's AE", a.proxy.ae_title),
        ("本节点 IP This node's IP", a.proxy.host),
        ("本节点端口 This node's port", str(a.proxy.port)),
        ("查询/获取权限 Q/R access", f"允许本节点查询与获取 let {a.proxy.ae_title} query and retrieve"),
    ]
    if a.retrieve == "c-move":
        rows.append(("C-MOVE 目的地 Destination", "请加为 C-MOVE 目的地 add it as a C-MOVE destination"))
    return rows


def handover_table(a: Answers) -> str:
    lines = _block(
        f"交给影像云 For the cloud ({a.cloud.ae_title}@{a.cloud.host}:{a.cloud.port}):", cloud_rows(a)
    )
    lines += ["", *_block(f"交给 PACS 管理员 For the PACS administrator ({a.pacs.ae_title}):", pacs_rows(a))]
    return "\n".join(lines)
