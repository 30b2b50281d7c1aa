"""Memory settings for ``serve`` (issue 6 soak): glibc arena cap, cheap per-association context copy."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from dicomproxy.config import Config
from dicomproxy.errors import ConfigError
from dicomproxy.handlers.qrservice import RelayAE, SharedUIDContext
from dicomproxy.memory import DEFAULT_ARENAS, ENV_VAR, M_ARENA_MAX, _glibc, limit_malloc_arenas
from dicomproxy.server import Server
from dicomproxy.transport.net import guard_requestor


class FakeGlibc:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def gnu_get_libc_version(self) -> bytes:
        return b"2.36"

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


class NotGlibc:  # musl / macOS: no gnu_get_libc_version
    def mallopt(self, param: int, value: int) -> int:  # pragma: no cover - must not be called
        raise AssertionError("mallopt called on a non-glibc libc")


def test_arena_cap_default_and_env() -> None:
    libc = FakeGlibc()
    assert limit_malloc_arenas({}, libc) == DEFAULT_ARENAS
    assert limit_malloc_arenas({ENV_VAR: "4"}, libc) == 4
    assert libc.calls == [(M_ARENA_MAX, DEFAULT_ARENAS), (M_ARENA_MAX, 4)]


def test_arena_cap_off_or_left_to_glibc() -> None:
    libc = FakeGlibc()
    assert limit_malloc_arenas({ENV_VAR: "0"}, libc) is None
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "8", ENV_VAR: "2"}, libc) is None
    assert limit_malloc_arenas({}, NotGlibc()) is None
    assert limit_malloc_arenas({}, FakeGlibc(result=0)) is None  # mallopt refused
    assert libc.calls == []


@pytest.mark.parametrize("value", ["two", "-1"])
def test_arena_cap_bad_value(value: str) -> None:
    with pytest.raises(ConfigError, match=ENV_VAR):
        limit_malloc_arenas({ENV_VAR: value}, FakeGlibc())


def test_arena_cap_real_libc() -> None:
    libc = _glibc()
    if libc is None:
        pytest.skip("not glibc")
    assert limit_malloc_arenas({ENV_VAR: str(DEFAULT_ARENAS)}) == DEFAULT_ARENAS


def _storage_contexts() -> list[SharedUIDContext]:
    ae = RelayAE()
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return [SharedUIDContext.of(cx) for cx in ae.supported_contexts]


def test_shared_context_copy_shares_uids_not_containers() -> None:
    original = _storage_contexts()
    copies = deepcopy(original)  # what pynetdicom does for every accepted association
    for a, b in zip(original, copies, strict=True):
        assert type(b) is SharedUIDContext and b is not a
        assert b.abstract_syntax is a.abstract_syntax
        assert b.transfer_syntax == a.transfer_syntax and b.transfer_syntax is not a.transfer_syntax
        assert all(x is y for x, y in zip(a.transfer_syntax, b.transfer_syntax, strict=True))
        assert (b.scu_role, b.scp_role) == (a.scu_role, a.scp_role) == (True, True)
    copies[0].transfer_syntax = [ALL_TRANSFER_SYNTAXES[0]]
    copies[0].context_id, copies[0].result = 1, 0
    assert len(original[0].transfer_syntax) == len(ALL_TRANSFER_SYNTAXES)
    assert (original[0].context_id, original[0].result) == (None, None)


def test_server_negotiates_with_shared_contexts(
    make_config: Callable[..., Config], run_proxy: Callable[[Config], Server]
) -> None:
    server = run_proxy(make_config())
    contexts = server._server.contexts
    assert contexts and all(type(cx) is SharedUIDContext for cx in contexts)
    assert len(contexts) == len(server.ae.supported_contexts)

    ae = AE(ae_title="jobserver")
    ae.add_requested_context(CTImageStorage, [JPEGLSLossless])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMPROXY")
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax): cx for cx in assoc.accepted_contexts}
        assert accepted[CTImageStorage].transfer_syntax == [JPEGLSLossless]
        assert accepted[MRImageStorage].transfer_syntax == [ExplicitVRLittleEndian]
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    assert len(contexts[0].transfer_syntax) == len(ALL_TRANSFER_SYNTAXES)  # the server's own: untouched
