"""医院组织机构代码: the hospital's organisation code, as the view's HospitalID holds it.

Three forms are accepted, because the cloud decides which one the view carries (接口文档 writes
``74580626``: the 8-character body without its check character):

- 8 characters ``[0-9A-Z]``: the body of a GB 11714-1997 code, no check character (the seed's form);
- 9 characters, or ``XXXXXXXX-C``: body + check character, verified (GB 11714-1997 §5):
  ``C9 = 11 - (Σ Ci·Wi mod 11)``, weights 3 7 9 10 5 8 4 2, letters A-Z count 10-35,
  10 is written ``X`` and 11 ``0``;
- 18 characters: the 统一社会信用代码 (GB 32100-2015) that replaced it since 2015, verified by
  python-stdnum (``stdnum.cn.uscc``; it has no GB 11714 check, hence the one here).

The value is kept as typed (only surrounding spaces dropped): it must equal HospitalID exactly.
"""

from __future__ import annotations

import re

from stdnum.cn import uscc
from stdnum.exceptions import ValidationError

_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_BODY = re.compile(r"^[0-9A-Z]{8}$")
_FULL = re.compile(r"^(?P<body>[0-9A-Z]{8})-?(?P<check>[0-9X])$")


def check_character(body: str) -> str:
    """The GB 11714 check character of an 8-character body (``74580626`` → ``0``)."""
    if not _BODY.match(body):
        raise ValueError(f"{body!r} is not 8 digits or capital letters")
    total = sum(int(c, 36) * w for c, w in zip(body, _WEIGHTS, strict=True))
    value = 11 - total % 11
    return "X" if value == 10 else "0" if value == 11 else str(value)


def validate_org_code(text: str) -> str:
    """The code as typed if it is one of the three forms, else ``ValueError`` saying why."""
    code = text.strip()
    if _BODY.match(code):
        return code
    full = _FULL.match(code)
    if full:
        expected = check_character(full["body"])
        if full["check"] != expected:
            raise ValueError(
                f"校验码错误 / wrong check character: {code} should end in {expected} (GB 11714)"
            )
        return code
    if len(code) == 18:
        try:
            canonical = uscc.validate(code)
        except ValidationError as exc:
            raise ValueError(f"统一社会信用代码无效 / not a valid GB 32100 code: {exc}") from None
        if canonical == code:
            return code
    if code.upper() != code:
        raise ValueError(f"请用大写字母 / capital letters, as the view holds it: {code.upper()}")
    raise ValueError(
        "组织机构代码应为 8 位（视图中的写法）、9 位（含校验码）或 18 位统一社会信用代码 / "
        "an organisation code is 8 characters (as in the view), 9 with the check character, "
        "or an 18-character unified social credit code (digits and capital letters)"
    )
