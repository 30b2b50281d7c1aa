"""The audit chain's hash functions: SHA-256 (FIPS 180-4) and SM3 (GB/T 32905-2016, the 国密
hash that 等保 2.0 assessments increasingly ask for).

SM3 comes from OpenSSL through :mod:`hashlib` (OpenSSL ≥ 1.1.1 builds it in its default provider:
Debian 12/13, Ubuntu 22.04/24.04), else from the ``gmssl`` package (pure Python, the most used SM3
implementation on PyPI; ``pip install dicomproxy[gm]``). Both give the standard's test vector:
SM3("abc") = 66c7f0f4…8f4ba8e0 (GB/T 32905-2016 A.1; ``tests/test_audit.py``).

A row's hash covers the previous row's hash and the canonical JSON of its hashed columns; a row
hashed with SM3 also covers its ``hash_alg``, so an algorithm cannot be swapped on a row without
breaking the chain (SHA-256 rows hash as they always did: chains written before SM3 still verify).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from dicomproxy.config.operations import sm3_source

SHA256 = "sha256"
SM3 = "sm3"
ALGORITHMS = (SHA256, SM3)

#: Columns that the hash covers, in this order.
HASHED = (
    "seq",
    "time",
    "action",
    "outcome",
    "calling_ae",
    "address",
    "tls_identity",
    "destination",
    "job_id",
    "detail",
    "patient_ids",
    "study_uids",
)


def _openssl_sm3(data: bytes) -> str:
    return hashlib.new(SM3, data).hexdigest()


def _gmssl_sm3(data: bytes) -> str:
    from gmssl import func, sm3  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return str(sm3.sm3_hash(func.bytes_to_list(data)))


def hasher(alg: str) -> Callable[[bytes], str]:
    """``bytes → hex digest`` for ``alg``; ValueError for an unknown one or SM3 where none exists."""
    if alg == SHA256:
        return lambda data: hashlib.sha256(data).hexdigest()
    if alg == SM3:
        source = sm3_source()
        if source == "openssl":
            return _openssl_sm3
        if source == "gmssl":
            return _gmssl_sm3
        raise ValueError("SM3 is not available: OpenSSL lacks it and the gmssl package is not installed")
    raise ValueError(f"unknown hash algorithm {alg!r} (one of {', '.join(ALGORITHMS)})")


def row_hash(prev_hash: str, row: Mapping[str, Any], alg: str = SHA256) -> str:
    """The hash of ``row`` chained to ``prev_hash`` (module docstring)."""
    values: dict[str, Any] = {}
    for name in HASHED:
        value = row[name]
        if isinstance(value, dt.datetime):
            value = value.strftime("%Y-%m-%dT%H:%M:%S")
        values[name] = value
    if alg != SHA256:
        values["hash_alg"] = alg
    canonical = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hasher(alg)((prev_hash + canonical).encode("utf-8"))
