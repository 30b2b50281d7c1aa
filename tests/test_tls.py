"""DICOM TLS (PS3.15 Annex B) inbound, with real DCMTK echoscu and pynetdicom clients.

The test PKI is the ``pki`` fixture of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomproxy.config import TlsConfig
from dicomproxy.errors import ConfigError
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.tls import client_tls_args
from testkit.dcmtk import run_tool


@pytest.fixture
def tls_proxy(make_config, run_proxy, pki):
    cfg = make_config(
        proxy={"tls": {"cert": str(pki["server"]), "ca": str(pki["ca"]), "require_client_cert": True}}
    )
    return run_proxy(cfg)


def test_pynetdicom_client_with_trusted_cert(tls_proxy, pki) -> None:
    args = client_tls_args(TlsConfig(cert=str(pki["client"]), ca=str(pki["ca"])), "127.0.0.1")
    result = c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", tls_proxy.port), tls_args=args)
    assert result.ok, result.detail


def test_plain_tcp_client_is_refused(tls_proxy) -> None:
    result = c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", tls_proxy.port), timeout=5)
    assert not result.ok


def test_untrusted_client_cert_is_refused(tls_proxy, pki) -> None:
    args = client_tls_args(
        TlsConfig(cert=str(pki["rogue_crt"]), key=str(pki["rogue_key"]), ca=str(pki["ca"])), "127.0.0.1"
    )
    result = c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", tls_proxy.port), tls_args=args, timeout=5)
    assert not result.ok
    # and the server keeps serving trusted clients
    good = client_tls_args(TlsConfig(cert=str(pki["client"]), ca=str(pki["ca"])), "127.0.0.1")
    assert c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", tls_proxy.port), tls_args=good).ok


def test_client_without_certificate_is_refused(tls_proxy, pki) -> None:
    """TLS with a trusted server but no client certificate: ``require_client_cert`` means
    required, not optional (issue 18, mutant 4: CERT_OPTIONAL let such a client in)."""
    args = client_tls_args(TlsConfig(ca=str(pki["ca"])), "127.0.0.1")
    result = c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", tls_proxy.port), tls_args=args, timeout=5)
    assert not result.ok, result.detail
    good = client_tls_args(TlsConfig(cert=str(pki["client"]), ca=str(pki["ca"])), "127.0.0.1")
    assert c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", tls_proxy.port), tls_args=good).ok


@pytest.mark.parametrize("with_ca", [True, False], ids=["ca", "no-ca"])
def test_client_certificate_optional_unless_required(make_config, run_proxy, pki, with_ca: bool) -> None:
    """Without ``require_client_cert`` a client without a certificate gets in; with ``ca`` a
    certificate it does present must still be trusted."""
    tls: dict[str, object] = {"cert": str(pki["server"])}
    if with_ca:
        tls["ca"] = str(pki["ca"])
    proxy = run_proxy(make_config(proxy={"tls": tls}))
    remote = Remote("DICOMPROXY", "127.0.0.1", proxy.port)
    anonymous = client_tls_args(TlsConfig(ca=str(pki["ca"])), "127.0.0.1")
    result = c_echo("jobserver", remote, tls_args=anonymous, timeout=5)
    assert result.ok, result.detail
    rogue = client_tls_args(
        TlsConfig(cert=str(pki["rogue_crt"]), key=str(pki["rogue_key"]), ca=str(pki["ca"])), "127.0.0.1"
    )
    assert c_echo("jobserver", remote, tls_args=rogue, timeout=5).ok is not with_ca


@pytest.mark.usefixtures("dcmtk")
def test_dcmtk_echoscu_tls(tls_proxy, pki) -> None:
    common = ["-aet", "jobserver", "-aec", "DICOMPROXY", "+cf", str(pki["ca"])]
    ok = run_tool(
        "echoscu",
        *common,
        "+tls",
        str(pki["client_key"]),
        str(pki["client_crt"]),
        "127.0.0.1",
        str(tls_proxy.port),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rogue = run_tool(
        "echoscu",
        *common,
        "+tls",
        str(pki["rogue_key"]),
        str(pki["rogue_crt"]),
        "127.0.0.1",
        str(tls_proxy.port),
    )
    assert rogue.returncode != 0
    anonymous = run_tool("echoscu", *common, "--anonymous-tls", "127.0.0.1", str(tls_proxy.port))
    assert anonymous.returncode != 0, anonymous.stdout + anonymous.stderr


def test_tls_config_errors(make_config, pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"proxy\.tls\.cert: file .* does not exist"):
        make_config(proxy={"tls": {"cert": str(tmp_path / "missing.pem")}})
    with pytest.raises(ConfigError, match=r"proxy\.tls\.ca: is required when require_client_cert"):
        make_config(proxy={"tls": {"cert": str(pki["server"]), "require_client_cert": True}})
    with pytest.raises(ConfigError, match=r"pacs\.tls\.require_client_cert: unknown key"):
        make_config(pacs={"ae_title": "P", "host": "h", "port": 1, "tls": {"require_client_cert": True}})
