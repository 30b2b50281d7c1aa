"""One parser per kind of answer: text in, normalised value out, ``ValueError`` (in Chinese and
English) when the text cannot be used. ``init`` calls them as each answer is typed."""

from __future__ import annotations

import ipaddress
import re

from dicomproxy.config.reader import is_ae_title

#: RFC 1123 §2.1 host name label: letters, digits, hyphens inside, 1-63 characters.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

#: 影像压缩方式 as the interface document numbers it (第 3 节): 1 原图, 2 有损, 3 无损.
COMPRESSION_CHOICES = {"1": "none", "2": "lossy", "3": "lossless"}
COMPRESSION_LABELS = {"none": "1 不压缩（原图）", "lossy": "2 有损压缩", "lossless": "3 无损压缩"}
#: 影像获取方式 → [pacs].retrieve.
RETRIEVE_CHOICES = {"C-MOVE": "c-move", "C-GET": "c-get"}


def parse_host(text: str) -> str:
    """An IPv4/IPv6 address (not 0.0.0.0 or ::) or an RFC 1123 host name; all-numeric dotted
    text must be an IPv4 address."""
    value = text.strip()
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if address.is_unspecified:
            raise ValueError(
                f"{value} 是“任意地址”，请填写实际地址 / is no address another machine can reach"
            )
        return str(address)
    labels = value.rstrip(".").split(".")
    if (
        value
        and len(value) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()  # 10.0.0.256 is a bad address, not a host name
    ):
        return value
    raise ValueError(f"不是有效的 IP 地址或主机名 / {value!r} is not an IP address or host name")


def parse_port(text: str | int) -> int:
    """A TCP port, 1-65535."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"端口应为数字 / a port is a number, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"端口范围 1-65535 / a port is 1-65535, not {value}")
    return value


def parse_ae_title(text: str) -> str:
    """PS3.5 6.2 AE: ≤ 16 characters, no backslash or control characters, not all spaces;
    leading and trailing spaces are not significant and are dropped."""
    if not is_ae_title(text):
        raise ValueError(
            f"AE 标识为 1-16 个 ASCII 字符，不含反斜杠 / {text!r} is not an AE title "
            "(1-16 printable ASCII characters, no backslash, not all spaces)"
        )
    return text.strip()


def parse_text(text: str, *, limit: int = 64) -> str:
    """Free text such as the hospital's name (the view's varchar(64)): not empty, ≤ ``limit``."""
    value = text.strip()
    if not value:
        raise ValueError("不能为空 / must not be empty")
    if len(value) > limit:
        raise ValueError(f"最多 {limit} 个字符 / at most {limit} characters, not {len(value)}")
    if any(ord(c) < 0x20 for c in value):
        raise ValueError("不能含控制字符 / no control characters")
    return value


def parse_secret(text: str) -> str:
    """A password: anything but empty (kept exactly, spaces included)."""
    if not text:
        raise ValueError("不能为空 / must not be empty")
    if "\n" in text or "\r" in text:
        raise ValueError("不能含换行 / no line breaks")
    return text


def parse_compression(text: str) -> str:
    """``1``/``2``/``3`` (the document's numbers) or ``none``/``lossy``/``lossless``."""
    value = text.strip().lower()
    if value in COMPRESSION_CHOICES:
        return COMPRESSION_CHOICES[value]
    if value in COMPRESSION_CHOICES.values():
        return value
    raise ValueError(f"请选择 1、2 或 3 / choose 1 (none), 2 (lossy) or 3 (lossless), not {text!r}")


def parse_retrieve(text: str) -> str:
    """``C-MOVE``/``C-GET`` in any case, with or without the hyphen → ``c-move``/``c-get``."""
    value = text.strip().upper().replace("_", "-")
    value = {"CMOVE": "C-MOVE", "MOVE": "C-MOVE", "CGET": "C-GET", "GET": "C-GET"}.get(value, value)
    if value in RETRIEVE_CHOICES:
        return RETRIEVE_CHOICES[value]
    raise ValueError(f"请选择 C-MOVE 或 C-GET / choose C-MOVE or C-GET, not {text!r}")
