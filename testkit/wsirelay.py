"""Relay one large whole-slide image through a ``dicomproxy serve`` process and measure it (issue 8).

Shared by ``tests/test_archives_wsi.py`` (≥ 500 MB, peak RSS bound) and
``benchmarks/bench_wsi.py`` (≥ 1 GB, wall time and peak RSS). The slide (VL Whole Slide
Microscopy, JPEG Baseline tiles, written by streaming) lives in a DCMTK dcmqrscp that is the
``pis`` archive (``[[archives]]``, Sysid PIS); ``[pacs]`` serves only RIS and is never asked.
The cloud (pynetdicom) C-MOVEs the study to a DCMTK storescp, or with ``stow=True`` to a DICOMweb
peer — Orthanc with its DICOMweb plugin, by STOW-RS (issue 27). The proxy's peak RSS is its
``VmHWM`` from ``/proc/PID/status`` after the move.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from sqlalchemy import create_engine

from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo
from testkit.dcmtk import DcmQrSCP, StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples_dept import dept_exam_row, dept_study_specs, write_wsi
from testkit.viewdb import create_view_table, insert_rows

PROXY_AE = "DICOMPROXY"


@dataclass(frozen=True)
class WsiRelayResult:
    file_bytes: int
    frames: int
    status: int | None
    completed: int
    wall_s: float
    proxy_peak_rss_mb: float
    identical: bool


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` (peak resident set size) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def dataset_digest(path: Path) -> str:
    """SHA-256 of the data set after the File Meta Information (PS3.10 7.1): what the network carries."""
    with path.open("rb") as fp:
        fp.seek(_meta_end(path))
        h = hashlib.sha256()
        while chunk := fp.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _meta_end(path: Path) -> int:
    meta = read_file_meta_info(path)
    # 128-byte preamble + "DICM" + (0002,0000) element (12 bytes) + its value
    return 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)


def write_config(
    path: Path, port: int, data: Path, view_url: str, archive: Remote, dest: Remote, stow_url: str = ""
) -> None:
    dest_block = (
        f'[[peers]]\nae_title = "{dest.ae_title}"\nkind = "dicomweb"\nurl = "{stow_url}"\n'
        "transfer_syntax_param = false\n"
        if stow_url
        else f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "127.0.0.1"\nport = {dest.port}\n'
    )
    path.write_text(
        f'[proxy]\nae_title = "{PROXY_AE}"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n'
        '[pacs]\nae_title = "RISPACS"\nhost = "127.0.0.1"\nport = 1\nsysids = ["RIS"]\n'
        '[logging]\nlevel = "WARNING"\n'
        f'[[archives]]\nname = "pis"\nae_title = "{archive.ae_title}"\nhost = "{archive.host}"\n'
        f'port = {archive.port}\nsysids = ["PIS"]\nmax_concurrent = 1\ndimse_timeout = 300\n'
        '[[peers]]\nae_title = "CLOUD"\nhost = "127.0.0.1"\nport = 1\n' + dest_block
    )


def _stored_files(cloud: Orthanc, folder: Path) -> list[Path]:
    """What Orthanc holds, each instance downloaded to ``folder`` (streamed, not read into memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for iid in cloud.request("GET", "/instances"):
        path = folder / f"{iid}.dcm"
        with (
            urllib.request.urlopen(f"{cloud.url}/instances/{iid}/file", timeout=600) as rsp,
            path.open("wb") as fh,
        ):
            shutil.copyfileobj(rsp, fh, 8 * 1024 * 1024)
        out.append(path)
    return out


def relay_wsi(
    workdir: Path, target_bytes: int, *, timeout: float = 600.0, stow: bool = False
) -> WsiRelayResult:
    """Write the slide, load dcmqrscp, run the proxy, C-MOVE the study; everything started is stopped.
    ``stow``: the destination is Orthanc's DICOMweb plugin, reached by STOW-RS."""
    spec = next(s for s in dept_study_specs() if s.kind == "SM")
    workdir.mkdir(parents=True, exist_ok=True)
    slide = write_wsi(spec, workdir / "slide.dcm", target_bytes=target_bytes)
    proxy_port = free_port()
    started: list[object] = []
    try:
        archive = DcmQrSCP(
            workdir / "dcmqrscp",
            "PISARCH",
            {"proxy": Remote(PROXY_AE, "127.0.0.1", proxy_port)},
            keep_syntax=True,
            max_study_mb=1024,  # dcmqrscp 3.6.7 caps a study at 1 GiB (maxBytesPerStudy)
        ).start()
        started.append(archive)
        archive.load([slide.path])
        cloud: Orthanc | None = None
        if stow:
            cloud = Orthanc(workdir / "cloud", ae_title="DEST", dicomweb=True).start()
            started.append(cloud)
            dest_remote, stow_url = cloud.remote, cloud.stow_url
        else:
            dest = StoreSCP(workdir / "dest", "DEST").start()
            started.append(dest)
            dest_remote, stow_url = dest.remote, ""
        view_url = f"sqlite:///{workdir / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        insert_rows(engine, [dept_exam_row(spec)])
        engine.dispose()
        cfg = workdir / "proxy.toml"
        write_config(cfg, proxy_port, workdir / "var", view_url, archive.remote, dest_remote, stow_url)
        proxy = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(cfg)], workdir / "proxy.log")
        started.append(proxy)
        remote = Remote(PROXY_AE, "127.0.0.1", proxy_port)
        wait_for_echo(remote, calling="CLOUD", proc=proxy.proc)
        t0 = time.monotonic()
        result = scu.move(
            remote, "DEST", scu.identifier(study_uids=[spec.study_uid]), calling_ae="CLOUD", timeout=timeout
        )
        wall = time.monotonic() - t0
        rss = peak_rss_mb(proxy.proc.pid)
        received = dest.received() if cloud is None else _stored_files(cloud, workdir / "stored")
        identical = len(received) == 1 and dataset_digest(received[0]) == dataset_digest(slide.path)
        for p in received:
            p.unlink()
        return WsiRelayResult(
            slide.file_size, slide.frames, result.status, result.completed, wall, rss, identical
        )
    finally:
        for item in reversed(started):
            item.stop()  # type: ignore[attr-defined]
        slide.path.unlink(missing_ok=True)
        shutil.rmtree(workdir / "dcmqrscp" / "db", ignore_errors=True)  # the archive's copy
