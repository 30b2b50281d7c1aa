"""The DIMSE requester commands: ``echo``, ``find``, ``move``, ``get`` (PS3.4 A, C)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydicom.dataset import Dataset

from dicomproxy.cli.common import config_option, config_path, load_or_exit, verbose_option
from dicomproxy.config import TlsConfig
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.tls import client_tls_args

if TYPE_CHECKING:  # the requester machinery is imported by move/get only
    from dicomproxy.transport.scu import RetrieveSummary


@click.command()
@config_option(help="Config file: gives our AE title, the PACS and the peers.")
@click.option("--peer", "peer_name", default=None, help="Echo this configured [[peers]] AE title.")
@click.option("--host", default=None, help="Host to echo (with --port).")
@click.option("--port", type=int, default=None, help="Port to echo (with --host).")
@click.option("--aet", "called", default=None, help="Called AE title (default: the PACS's or 'ANY-SCP').")
@click.option("--calling", default=None, help="Our AE title (default: [proxy].ae_title or DICOMPROXY).")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@verbose_option
def echo(
    peer_name: str | None,
    host: str | None,
    port: int | None,
    called: str | None,
    calling: str | None,
    timeout: float,
    verbose: bool,
) -> None:
    """C-ECHO the PACS (default), a configured peer, or any --host/--port/--aet."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    path = config_path(default=None)
    config = load_or_exit(path) if path else None
    calling_ae = calling or (config.proxy.ae_title if config else "DICOMPROXY")
    tls: TlsConfig | None = None
    if host is not None or port is not None:
        if host is None or port is None:
            raise click.UsageError("--host and --port go together")
        remote = Remote(called or "ANY-SCP", host, port)
    elif peer_name is not None:
        if config is None:
            raise click.UsageError("--peer needs a config file (-c)")
        peer = config.peer(peer_name)
        if peer is None:
            click.echo(f"FAIL: {peer_name!r} is not a configured peer", err=True)
            sys.exit(1)
        if not peer.speaks_dimse:
            click.echo(f"FAIL: {peer_name!r} is a DICOMweb peer (no DIMSE port to echo)", err=True)
            sys.exit(1)
        remote = Remote(peer.ae_title, peer.host, peer.port)
        tls = peer.tls
    elif config is not None:
        remote = Remote(config.pacs.ae_title, config.pacs.host, config.pacs.port)
        tls = config.pacs.tls
    else:
        raise click.UsageError("give -c FILE, --peer NAME, or --host and --port")
    try:
        tls_args = client_tls_args(tls, remote.host)
    except (OSError, ValueError) as exc:
        click.echo(f"FAIL: TLS set-up: {exc}", err=True)
        sys.exit(1)
    result = c_echo(calling_ae, remote, timeout=timeout, tls_args=tls_args)
    if result.ok:
        click.echo(f"OK: {result.detail}")
        return
    click.echo(f"FAIL: {result.detail}", err=True)
    sys.exit(1)


@click.command()
@config_option(help="Config file: default calling AE title and target (this proxy).")
@click.option("--host", default=None, help="Host to query (default: this proxy, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to query (default: [proxy].port).")
@click.option("--aet", "called", default=None, help="Called AE title (default: [proxy].ae_title).")
@click.option("--calling", default=None, help="Our AE title (default: first [[peers]] or FINDSCU).")
@click.option("-L", "--level", type=click.Choice(["PATIENT", "STUDY", "SERIES", "IMAGE"]), default="STUDY")
@click.option("-m", "--model", type=click.Choice(["study", "patient"]), default="study", show_default=True)
@click.option("-k", "--key", "keys", multiple=True, help="Keyword=value or gggg,eeee=value (repeatable).")
@click.option(
    "--charset", default="ISO_IR 192", show_default=True, help="Specific Character Set of the query."
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
def find(
    host: str | None,
    port: int | None,
    called: str | None,
    calling: str | None,
    level: str,
    model: str,
    keys: tuple[str, ...],
    charset: str,
    timeout: float,
) -> None:
    """C-FIND any AE (default: this proxy) and print the answers as a table."""
    from dicomproxy.charsets import install_pydicom_workarounds
    from dicomproxy.transport.findscu import DEFAULT_KEYS, build_query, format_table, parse_key, run_find

    install_pydicom_workarounds()
    logging.basicConfig(level=logging.WARNING)
    path = config_path(default=None)
    config = load_or_exit(path) if path else None
    try:
        parsed = [parse_key(k) for k in keys]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    remote = Remote(
        called or (config.proxy.ae_title if config else "ANY-SCP"),
        host or "127.0.0.1",
        port if port is not None else (config.proxy.port if config else 11112),
    )
    calling_ae = calling or (config.peers[0].ae_title if config and config.peers else "FINDSCU")
    query = build_query(level, parsed, charset)
    outcome = run_find(calling_ae, remote, model, query, timeout=timeout)
    columns = [keyword for keyword, _ in parsed] or DEFAULT_KEYS[level]  # the user's order
    for line in format_table(outcome.answers, columns):
        click.echo(line)
    detail = f" ({outcome.comment})" if outcome.comment else ""
    status = "no answer" if outcome.status < 0 else f"0x{outcome.status:04X}"
    click.echo(f"{len(outcome.answers)} match(es), final status {status}{detail}")
    sys.exit(0 if outcome.status == 0 else 1)


@dataclass(frozen=True)
class ScuRequest:
    """What ``move`` and ``get`` share: whom to ask, as whom, for what (the Identifier), how long."""

    remote: Remote
    calling: str
    identifier: Dataset
    patient_root: bool
    timeout: float


_SCU_OPTIONS = (
    click.option("--host", required=True, help="Host of the AE to ask."),
    click.option("--port", type=int, required=True),
    click.option("--aet", "called", default="DICOMPROXY", show_default=True, help="Called AE title."),
    click.option("--calling", default="DICOMPROXY-SCU", show_default=True, help="Our AE title."),
    click.option("--level", type=click.Choice(["PATIENT", "STUDY", "SERIES", "IMAGE"]), default="STUDY"),
    click.option("--study", "studies", multiple=True, help="Study Instance UID (repeatable)."),
    click.option("--series", "series", multiple=True, help="Series Instance UID (repeatable)."),
    click.option("--sop", "sops", multiple=True, help="SOP Instance UID (repeatable)."),
    click.option("--accession", default=None, help="Accession Number (STUDY level)."),
    click.option("--patient-id", default=None, help="Patient ID."),
    click.option("--patient-root", is_flag=True, help="Patient Root model (default Study Root)."),
    click.option("--timeout", type=float, default=300.0, show_default=True, help="DIMSE timeout."),
)


def scu_request(func: Callable[..., None]) -> Callable[..., None]:
    """The options ``move`` and ``get`` share, handed to the command as one :class:`ScuRequest`."""

    @functools.wraps(func)
    def command(
        *,
        host: str,
        port: int,
        called: str,
        calling: str,
        level: str,
        studies: tuple[str, ...],
        series: tuple[str, ...],
        sops: tuple[str, ...],
        accession: str | None,
        patient_id: str | None,
        patient_root: bool,
        timeout: float,
        **rest: Any,
    ) -> None:
        from dicomproxy.transport import scu

        identifier = scu.identifier(
            level,
            study_uids=studies,
            series_uids=series,
            sop_uids=sops,
            accession=accession,
            patient_id=patient_id,
        )
        request = ScuRequest(Remote(called, host, port), calling, identifier, patient_root, timeout)
        func(request, **rest)

    for option in reversed(_SCU_OPTIONS):
        command = option(command)
    return command


def _finish(summary: RetrieveSummary) -> None:
    click.echo(f"\n{summary.line()}")
    sys.exit(0 if summary.category in ("Success", "Warning") else 1)


@click.command("move")
@scu_request
@click.option("--dest", required=True, help="Move Destination AE title.")
def move_cmd(request: ScuRequest, dest: str) -> None:
    """C-MOVE to any AE (e.g. this proxy) and show the sub-operation progress."""
    from dicomproxy.transport import scu

    def progress(s: RetrieveSummary) -> None:
        done = s.completed + s.failed + s.warning
        total = done + (s.remaining or 0)
        click.echo(f"\r  {done}/{total} instances (failed {s.failed}, warning {s.warning})", nl=False)

    summary = scu.move(
        request.remote,
        dest,
        request.identifier,
        calling_ae=request.calling,
        patient_root=request.patient_root,
        timeout=request.timeout,
        progress=progress,
    )
    _finish(summary)


@click.command("get")
@scu_request
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write received instances here (default: count only).",
)
def get_cmd(request: ScuRequest, out_dir: Path | None) -> None:
    """C-GET from any AE (e.g. this proxy); instances arrive on our association."""
    from dicomproxy.transport import scu

    def progress(s: RetrieveSummary) -> None:
        click.echo(f"\r  received {s.received} instance(s), remaining {s.remaining}", nl=False)

    summary = scu.get(
        request.remote,
        request.identifier,
        calling_ae=request.calling,
        out_dir=out_dir,
        patient_root=request.patient_root,
        timeout=request.timeout,
        progress=progress,
    )
    _finish(summary)
