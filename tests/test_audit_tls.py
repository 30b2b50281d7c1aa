"""The audit trail names the TLS client certificate of a peer (issue 15), with a real TLS association."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dicomproxy.audit.trail import AuditTrail
from dicomproxy.config import Config, TlsConfig
from dicomproxy.server import Server
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.tls import client_tls_args
from tests.conftest import ConfigFactory


def test_association_record_names_the_client_certificate(
    make_config: ConfigFactory, run_proxy: Callable[[Config], Server], pki: dict[str, Path]
) -> None:
    cfg = make_config(
        proxy={"tls": {"cert": str(pki["server"]), "ca": str(pki["ca"]), "require_client_cert": True}}
    )
    server = run_proxy(cfg)
    args = client_tls_args(TlsConfig(cert=str(pki["client"]), ca=str(pki["ca"])), "127.0.0.1")
    assert c_echo("jobserver", Remote("DICOMPROXY", "127.0.0.1", server.port), tls_args=args).ok
    server.stop(drain_timeout=2.0)

    trail = AuditTrail(server.ctx.journal.engine)  # the engine is disposed, not dropped: it reconnects
    (assoc,) = [r for r in trail.rows(peer="jobserver") if r["action"] == "association"]
    assert assoc["outcome"] == "accepted"
    assert "trustme" in assoc["tls_identity"]  # the subject of the test PKI's client certificate
    assert trail.verify().ok
