"""Relay benchmark (not a test): proxy relay vs direct Orthanc → storescp C-MOVE.

    .venv/bin/python benchmarks/bench_relay.py [--slices 300] [--rounds 3] [--modes none,lossless,lossy]
                                               [--concurrent 4] [--max-pdu 0]

Generates a CT study (512×512, 16-bit), loads it into a real Orthanc (the PACS), starts DCMTK
storescp (the destination) and two dicomproxy processes (``serve``; upstream C-MOVE and
upstream C-GET), then alternates per round: direct C-MOVE (Orthanc → storescp), proxy
(c-move upstream), proxy (c-get upstream). Prints one Markdown table: median wall time
of the C-MOVE as seen by the requester, ratio to direct, MB/s, median time from the
request to the first file at the destination, each proxy's peak RSS (VmHWM) and the median CPU
seconds its own process used per move (user + system, from /proc; transcoding pool workers are
child processes, counted apart as "pool CPU s") — figures that stay comparable when the machine is
busy.
TCP_NODELAY=1 is set for Orthanc and DCMTK by testkit.

``--modes``: extra proxy processes (upstream C-MOVE) whose ``[compression].mode`` is ``lossless``
or ``lossy``; storescp accepts every syntax, so the proxy compresses what it sends. Their MB/s is
raw (uncompressed) pixel bytes / wall time. ``--concurrent N``: N more studies of the same size are
loaded and moved at once (N threads, one study each), direct and through the C-MOVE proxy;
aggregate MB/s = all files / wall time of the slowest. ``--max-pdu N`` (0 = each tool's default):
Orthanc ``MaximumPduLength`` and storescp ``--max-pdu`` both set to N, so the direct baseline and
the proxy get the same larger PDUs (the proxy itself announces 0 = unlimited on both legs).
``--cloud-get``: two more rows, the cloud's C-GET (DCMTK ``getscu``) straight from the PACS and
through the upstream-C-MOVE proxy (the ratio of the latter is to the former).
``--pacs dcmqrscp``: DCMTK dcmqrscp instead of Orthanc as the PACS (it returns no study-level count
or SOP classes, so the first-instance figures show the relay's early start for such archives).
Every proxy relays the study once before the timed rounds (warm-up).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import create_engine

from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port, peer_env, require_tool, wait_for_echo
from testkit.console_load import ConsoleLoad
from testkit.dcmtk import DcmQrSCP, StoreSCP
from testkit.orthanc import Orthanc
from testkit.realct import write_real_study
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows


class BenchOrthanc(Orthanc):
    max_pdu = 0

    def _config(self) -> dict[str, Any]:
        cfg = super()._config()
        if self.max_pdu:
            cfg["MaximumPduLength"] = self.max_pdu
        return cfg


#: --nice: more [proxy] keys, written only when asked (an older revision's serve would reject them).
PROXY_EXTRA = [""]


def proxy_config(
    path: Path,
    ae: str,
    port: int,
    data: Path,
    view_url: str,
    pacs: Remote,
    method: str,
    mode: str = "none",
    http_port: int = 0,
    audit: bool = True,
    coerce: bool = True,
) -> None:
    path.write_text(
        f"[http]\nport = {http_port}\n[audit]\nenabled = {'true' if audit else 'false'}\n"
        f'[proxy]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\n'
        f"{PROXY_EXTRA[0]}"
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        f'retrieve = "{method}"\n'
        f'[compression]\nmode = "{mode}"\n{COMPRESSION_EXTRA[0]}'
        f'[logging]\nlevel = "{LOG_LEVEL[0]}"\n'
        f'[[peers]]\nae_title = "BENCH"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {DEST_PORT[0]}\n'
        f"coerce = {'true' if coerce else 'false'}\n"
    )


#: --console: proxies (upstream C-MOVE, mode none) with the HTTP console on and polled, and with the
#: audit trail off, beside the default one (audit on, console off): setup name → (http, audit).
CONSOLE_SETUPS = {"c-move+console": (True, True), "c-move-no-audit": (False, False)}


DEST_PORT = [0]
#: --coerce: what the view says of every study, unlike the PACS's files (issue 26).
COERCED_VIEW = {
    "PatientID": "H-BENCH-1",
    "PIDAssigningAuthority": "74580626.HIS",
    "PatientName": "李秀英",
    "AccessionNumber": "RIS-BENCH-1",
}
COMPRESSION_EXTRA = [""]
LOG_LEVEL = ["WARNING"]


class PyStoreSCP:
    """``benchmarks/pyscp.py`` (pynetdicom, accepts HTJ2K) with the interface of testkit's StoreSCP."""

    def __init__(self, workdir: Path, ae_title: str = "DEST") -> None:
        self.workdir, self.ae_title = workdir, ae_title
        self.outdir = workdir / "received"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)

    def start(self) -> PyStoreSCP:
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = Path(__file__).parent / "pyscp.py"
        cmd = [sys.executable, str(script), "--port", str(self.port), "--aet", self.ae_title]
        log = open(self.workdir / "pyscp.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([*cmd, "--out", str(self.outdir)], stdout=log, stderr=log)
        wait_for_echo(self.remote, 30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.outdir.iterdir() if p.is_file())


def verify_bit_exact(received: list[Path], sources: list[Path]) -> str:
    """Decode every received file with pydicom's plugins (HTJ2K and JPEG 2000: pylibjpeg-openjpeg,
    i.e. OpenJPEG — not the OpenJPH encoder that wrote it) and compare with the source pixels."""
    want = {}
    for p in sources:
        ds = pydicom.dcmread(p)
        want[str(ds.SOPInstanceUID)] = ds.pixel_array
    syntaxes: dict[str, int] = {}
    exact = 0
    for p in received:
        ds = pydicom.dcmread(p)
        ts = str(ds.file_meta.TransferSyntaxUID)
        syntaxes[ts] = syntaxes.get(ts, 0) + 1
        exact += bool((ds.pixel_array == want[str(ds.SOPInstanceUID)]).all())
    return f"{exact}/{len(received)} bit-exact after decoding with OpenJPEG; syntaxes {syntaxes}"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int, system_only: bool = False) -> float:
    """User + system CPU seconds of process ``pid`` so far (its own threads, not its children);
    with ``system_only``, the system (kernel) part alone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user = 0 if system_only else int(fields[11])
    return (user + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_idle_seconds() -> float:
    """Idle + I/O-wait CPU seconds of the whole machine so far, all CPUs (/proc/stat): a move that
    left this near 0 had every core busy (its own processes or anyone else's)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def peer_pids(*peers: Any) -> list[int]:
    """The PACS's and the destination's processes (testkit ``.process.proc`` or ``.proc``)."""
    out = []
    for peer in peers:
        proc = getattr(getattr(peer, "process", None), "proc", None) or getattr(peer, "proc", None)
        if proc is not None:
            out.append(proc.pid)
    return out


def peers_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds so far of ``pids`` and their live descendants (storescp --fork's children)."""
    total = 0.0
    for pid in pids:
        for one in (pid, *descendants(pid)):
            try:
                total += cpu_seconds(one)
            except OSError:  # ended in between
                continue
    return total


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the transcoding pool: forkserver and its workers)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            out.extend(int(c) for c in children)
            todo.extend(int(c) for c in children)
    return out


def pool_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the live descendants of ``pid`` (0.0 when it has none)."""
    total = 0.0
    for child in descendants(pid):
        try:
            total += cpu_seconds(child)
        except OSError:  # ended in between
            continue
    return total


@contextmanager
def first_file(folder: Path) -> Iterator[list[float]]:
    """Times the block: yields ``[t0]``; afterwards ``[t0, seconds to the first file in folder]``
    (polled every 2 ms by a thread; NaN if none came)."""
    t0 = time.perf_counter()
    seen: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with os.scandir(folder) as it:
                if any(True for _ in it):
                    seen.append(time.perf_counter() - t0)
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    times = [t0]
    try:
        yield times
    finally:
        stop.set()
        watcher.join()
        times.append(seen[0] if seen else float("nan"))


def timed_move(remote: Remote, dest: Any, study_uid: str, n: int) -> tuple[float, float, int]:
    """(wall seconds, seconds to first file at the destination, completed)."""
    for p in dest.received():
        p.unlink()
    with first_file(dest.outdir) as times:
        result = scu.move(
            remote, "DEST", scu.identifier(study_uids=[study_uid]), calling_ae="BENCH", timeout=600
        )
        wall = time.perf_counter() - times[0]
    if result.status != 0 or len(dest.received()) != n:
        raise RuntimeError(f"{remote}: {result.line()}, {len(dest.received())} files")
    return wall, times[1], result.completed


def timed_get(remote: Remote, outdir: Path, study_uid: str, n: int) -> tuple[float, float, int]:
    """The cloud's C-GET with DCMTK getscu (TCP_NODELAY=1) into ``outdir``: (wall s, first file s, files)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for p in outdir.iterdir():
        p.unlink()
    args = ["-S", "-aet", "BENCH", "-aec", remote.ae_title, "-k", "QueryRetrieveLevel=STUDY"]
    args += ["-k", f"StudyInstanceUID={study_uid}", "-od", str(outdir), remote.host, str(remote.port)]
    with first_file(outdir) as times:
        proc = subprocess.run(
            [require_tool("getscu"), *args], capture_output=True, text=True, env=peer_env(), timeout=600
        )
        wall = time.perf_counter() - times[0]
    got = len(list(outdir.iterdir()))
    if proc.returncode != 0 or got != n:
        raise RuntimeError(f"getscu from {remote}: exit {proc.returncode}, {got} files: {proc.stderr[-500:]}")
    return wall, times[1], got


def timed_concurrent(remote: Remote, dest: Any, study_uids: list[str], n_total: int) -> float:
    """Move every study at once, one thread each; wall seconds until the last one completes."""
    for p in dest.received():
        p.unlink()
    errors: list[str] = []

    def one(uid: str) -> None:
        res = scu.move(remote, "DEST", scu.identifier(study_uids=[uid]), calling_ae="BENCH", timeout=600)
        if res.status != 0:
            errors.append(res.line())

    threads = [threading.Thread(target=one, args=(u,)) for u in study_uids]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    got = len(dest.received())
    if errors or got != n_total:
        raise RuntimeError(f"{remote}: concurrent {errors[:2]}, {got}/{n_total} files")
    return wall


def raw_pixel_bytes(files: list[Path]) -> int:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.SamplesPerPixel)
        * (int(ds.BitsAllocated) // 8)
        * frames
        * len(files)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--corpus",
        choices=("real", "synthetic"),
        default="real",
        help="CT pixels: real slices from pydicom-data cycled under new UIDs (testkit.realct, default) "
        "or the synthetic phantom of testkit.samples",
    )
    ap.add_argument("--modes", default="none,lossless,lossy", help="compression modes to relay (C-MOVE)")
    ap.add_argument(
        "--lossless-syntaxes",
        default="",
        help="comma-separated [compression] lossless_syntaxes (default: the built-in order)",
    )
    ap.add_argument("--lossy-syntaxes", default="", help="comma-separated [compression] lossy_syntaxes")
    ap.add_argument("--concurrent", type=int, default=4, help="studies moved at once; 0 = skip")
    ap.add_argument("--max-pdu", type=int, default=0, help="Orthanc and storescp max PDU; 0 = defaults")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--dest",
        choices=("storescp", "pynetdicom"),
        default="storescp",
        help="the destination: DCMTK storescp (default; refuses HTJ2K) or benchmarks/pyscp.py "
        "(pynetdicom, accepts HTJ2K: the default lossless order then sends HTJ2K); with pynetdicom the "
        "lossless proxy's output is checked bit-exact by an independent decoder after the rounds",
    )
    ap.add_argument(
        "--cloud-get",
        action="store_true",
        help="also time the cloud's C-GET (DCMTK getscu) direct from the PACS and through the C-MOVE proxy",
    )
    ap.add_argument(
        "--pacs",
        choices=("orthanc", "dcmqrscp"),
        default="orthanc",
        help="the PACS: Orthanc (default) or DCMTK dcmqrscp (no study-level count or SOP classes)",
    )
    ap.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="record a proxy with py-spy (raw stacks, its pool workers included) into this file",
    )
    ap.add_argument(
        "--py-spy-gil", action="store_true", help="py-spy samples only the thread holding the GIL"
    )
    ap.add_argument(
        "--py-spy-native", action="store_true", help="py-spy records native (C) frames too (--native)"
    )
    ap.add_argument(
        "--py-spy-proxy",
        default="c-move",
        help="which proxy --py-spy records: c-move, c-get or a mode of --modes (default c-move)",
    )
    ap.add_argument(
        "--perf",
        type=Path,
        default=None,
        help="record the --py-spy-proxy with Linux perf (call graphs, kernel included) into this file",
    )
    ap.add_argument("--log-level", default="WARNING", help="Proxy log level (logs in the workdir).")
    ap.add_argument(
        "--console",
        action="store_true",
        help="two more proxies: HTTP console on (with /metrics and /api/status polled every second), "
        "and audit trail off; the default proxy has the audit trail on and the console off",
    )
    ap.add_argument(
        "--coerce",
        action="store_true",
        help="the view names the study differently from the PACS (issue 26): the proxies above send the "
        "PACS's bytes (coerce = false) and one more proxy, upstream C-MOVE, none, gives every instance "
        "the view's identity (coerce = true)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=None,
        help="[proxy] data_path_nice of the proxies (default: not written, the config's default)",
    )
    args = ap.parse_args()
    if args.nice is not None:
        PROXY_EXTRA[0] = f"data_path_nice = {args.nice}\n"
    for key, value in (
        ("lossless_syntaxes", args.lossless_syntaxes),
        ("lossy_syntaxes", args.lossy_syntaxes),
    ):
        if value:
            uids = ", ".join(f'"{u.strip()}"' for u in value.split(","))
            COMPRESSION_EXTRA[0] += f"{key} = [{uids}]\n"
    LOG_LEVEL[0] = args.log_level
    modes = [m for m in args.modes.split(",") if m and m != "none"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-relay-"))
    spec = StudySpec("CT", accession="B0001", series=1, images_per_series=args.slices, seed=42)
    print(f"# generating {args.slices} slices in {work}", file=sys.stderr)
    write = write_real_study if args.corpus == "real" else write_study
    files = write(spec, work / "study")
    total = sum(p.stat().st_size for p in files)
    pixels = raw_pixel_bytes(files)
    extra_specs = [
        StudySpec("CT", accession=f"B{k + 2:04d}", series=1, images_per_series=args.slices, seed=100 + k)
        for k in range(args.concurrent)
    ]
    extra_files = [write(sp, work / f"study{k + 2}") for k, sp in enumerate(extra_specs)]
    conc_total = sum(p.stat().st_size for fs in extra_files for p in fs)
    conc_n = sum(len(fs) for fs in extra_files)

    pdu_extra = ["--max-pdu", str(args.max_pdu)] if args.max_pdu else []
    dest: Any = (
        PyStoreSCP(work / "dest").start()
        if args.dest == "pynetdicom"
        else StoreSCP(work / "dest", "DEST", extra=pdu_extra).start()
    )
    DEST_PORT[0] = dest.port
    setups = [("c-move", "c-move", "PROXYMOVE", "none"), ("c-get", "c-get", "PROXYGET", "none")]
    setups += [(m, "c-move", f"PROXY{m.upper()}", m) for m in modes]
    if args.coerce:
        setups.insert(1, ("c-move+coerce", "c-move", "PROXYCOERCE", "none"))
    if args.console:
        setups += [
            ("c-move+console", "c-move", "PROXYHTTP", "none"),
            ("c-move-no-audit", "c-move", "PROXYNOAUD", "none"),
        ]
    http_ports = {name: free_port() for name in CONSOLE_SETUPS if CONSOLE_SETUPS[name][0]}
    ports = {name: free_port() for name, *_ in setups}
    pacs: BenchOrthanc | DcmQrSCP
    if args.pacs == "dcmqrscp":
        peers = {"dest": dest.remote}
        peers.update({ae.lower(): Remote(ae, "127.0.0.1", ports[name]) for name, _, ae, _ in setups})
        pacs = DcmQrSCP(work / "dcmqrscp", peers=peers, max_study_mb=4096).start()
    else:
        BenchOrthanc.max_pdu = args.max_pdu
        pacs = BenchOrthanc(work / "orthanc").start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    load_before = os.getloadavg()
    try:
        print(f"# loading {args.pacs}", file=sys.stderr)
        if isinstance(pacs, DcmQrSCP):
            for chunk in (files, *extra_files):
                for k in range(0, len(chunk), 500):  # storescu's command line stays short
                    pacs.load(chunk[k : k + 500])
        else:
            pacs.upload(files)
            for fs in extra_files:
                pacs.upload(fs)
            pacs.add_modality("dest", dest.remote)
        view_url = f"sqlite:///{work / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        differ = dict(COERCED_VIEW) if args.coerce else {}
        insert_rows(engine, [exam_row(spec, **differ), *(exam_row(sp, **differ) for sp in extra_specs)])
        engine.dispose()
        proxies: dict[str, Remote] = {}
        for name, method, ae, mode in setups:
            port = ports[name]
            cfg = work / f"{ae}.toml"
            http_on, audit_on = CONSOLE_SETUPS.get(name, (False, True))
            proxy_config(
                cfg,
                ae,
                port,
                work / f"var-{ae}",
                view_url,
                pacs.remote,
                method,
                mode,
                http_ports[name] if http_on else 0,
                audit_on,
                coerce=name == "c-move+coerce" or not args.coerce,
            )
            if method == "c-move" and isinstance(pacs, BenchOrthanc):
                pacs.add_modality(ae.lower(), Remote(ae, "127.0.0.1", port))
            log = open(work / f"{ae}.log", "wb")  # noqa: SIM115 - lives as long as the process
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "dicomproxy", "serve", "-c", str(cfg)], stdout=log, stderr=log
            )
            proxies[name] = Remote(ae, "127.0.0.1", port)
            wait_for_echo(proxies[name], 30, calling="BENCH")
        names = ["direct", *proxies]
        if args.cloud_get:
            names += ["get direct", "get proxy"]
        runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in proxies}
        sys_cpu: dict[str, list[float]] = {n: [] for n in proxies}
        pool_cpu: dict[str, list[float]] = {n: [] for n in proxies}
        idle: dict[str, list[float]] = {n: [] for n in names}
        peers: dict[str, list[float]] = {n: [] for n in names}
        peer_ids = peer_pids(pacs, dest)
        conc: dict[str, list[float]] = {"direct": [], "c-move": []}
        timed_move(pacs.remote, dest, spec.study_uid, len(files))  # warm-up (PACS cache)
        for name in proxies:  # and each proxy's first job (it learns whether its archive names SOP classes)
            timed_move(proxies[name], dest, spec.study_uid, len(files))
        spy = None
        if args.py_spy:
            pid = str(procs[args.py_spy_proxy].pid)
            spy_opts = ["--format", "raw", "--rate", "200", "--threads", "--subprocesses"]
            spy_opts += ["--gil"] if args.py_spy_gil else []
            spy_opts += ["--native"] if args.py_spy_native else []
            spy_opts += ["--output", str(args.py_spy)]
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", pid, *spy_opts],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        perf = None
        if args.perf:
            perf = subprocess.Popen(
                [
                    "perf",
                    "record",
                    "-g",
                    "-F",
                    "499",
                    "-p",
                    str(procs[args.py_spy_proxy].pid),
                    "-o",
                    str(args.perf),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        uids = [sp.study_uid for sp in extra_specs]
        if uids:
            timed_concurrent(pacs.remote, dest, uids, conc_n)  # warm-up
        for r in range(args.rounds):
            for name in names:
                if name.startswith("get "):
                    remote = pacs.remote if name == "get direct" else proxies["c-move"]
                    wall, first, _ = timed_get(remote, work / "cloud-get", spec.study_uid, len(files))
                    runs[name].append((wall, first))
                    print(f"# round {r + 1} {name}: {wall:.2f} s, first {first:.3f} s", file=sys.stderr)
                    continue
                remote = pacs.remote if name == "direct" else proxies[name]
                c0 = cpu_seconds(procs[name].pid) if name in procs else 0.0
                s0 = cpu_seconds(procs[name].pid, system_only=True) if name in procs else 0.0
                p0 = pool_cpu_seconds(procs[name].pid) if name in procs else 0.0
                i0 = machine_idle_seconds()
                q0 = peers_cpu_seconds(peer_ids)
                if name in http_ports:  # the console polled while the move runs
                    with ConsoleLoad(f"http://127.0.0.1:{http_ports[name]}"):
                        wall, first, _ = timed_move(remote, dest, spec.study_uid, len(files))
                else:
                    wall, first, _ = timed_move(remote, dest, spec.study_uid, len(files))
                runs[name].append((wall, first))
                idle[name].append(machine_idle_seconds() - i0)
                peers[name].append(peers_cpu_seconds(peer_ids) - q0)
                if name in procs:
                    cpu[name].append(cpu_seconds(procs[name].pid) - c0)
                    sys_cpu[name].append(cpu_seconds(procs[name].pid, system_only=True) - s0)
                    pool_cpu[name].append(pool_cpu_seconds(procs[name].pid) - p0)
                print(f"# round {r + 1} {name}: {wall:.2f} s, first {first:.3f} s", file=sys.stderr)
            if uids:
                for name in conc:
                    remote = pacs.remote if name == "direct" else proxies[name]
                    wall = timed_concurrent(remote, dest, uids, conc_n)
                    conc[name].append(wall)
                    print(f"# round {r + 1} {name} x{len(uids)}: {wall:.2f} s", file=sys.stderr)
        rss = {m: peak_rss_mb(p.pid) for m, p in procs.items()}
        verified = ""
        if args.dest == "pynetdicom" and "lossless" in proxies:
            timed_move(proxies["lossless"], dest, spec.study_uid, len(files))
            verified = verify_bit_exact(dest.received(), files)
        for recorder in (spy, perf):
            if recorder is not None:
                recorder.send_signal(signal.SIGINT)
                recorder.wait(60)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(30)
        dest.stop()
        pacs.stop()
    load_after = os.getloadavg()

    direct = statistics.median(w for w, _ in runs["direct"])
    pdu = f"max PDU {args.max_pdu} on Orthanc and storescp" if args.max_pdu else "tools' default max PDU"
    print(
        f"\n{args.slices} CT slices ({args.corpus} corpus), {total / 1e6:.0f} MB files "
        f"({pixels / 1e6:.0f} MB raw pixels), "
        f"median of {args.rounds} alternating rounds, PACS {args.pacs}, {pdu}, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f}\n"
    )
    print(
        "| path | wall s (median) | ratio to direct | MB/s (files) | raw-pixel MB/s "
        "| first instance s | proxy peak RSS MB | proxy CPU s | of which system s | pool CPU s "
        "| PACS + destination CPU s | machine idle CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    labels = {"direct": f"direct {args.pacs} → {args.dest}", "c-move": "proxy, upstream C-MOVE, none"}
    labels["c-get"] = "proxy, upstream C-GET, none"
    labels["get direct"] = f"cloud C-GET (getscu), direct from {args.pacs}"
    labels["get proxy"] = "cloud C-GET (getscu) through the proxy, upstream C-MOVE, none"
    labels["c-move+console"] = "proxy, upstream C-MOVE, none, HTTP console on and polled"
    labels["c-move-no-audit"] = "proxy, upstream C-MOVE, none, audit trail off"
    labels["c-move+coerce"] = (
        "proxy, upstream C-MOVE, none, **every instance coerced** to the view's identity"
    )
    if args.coerce:
        labels["c-move"] += " (coerce = false)"
        labels["c-get"] += " (coerce = false)"
    for name in names:
        base = statistics.median(w for w, _ in runs["get direct"]) if name.startswith("get ") else direct
        wall = statistics.median(w for w, _ in runs[name])
        first = statistics.median(f for _, f in runs[name])
        mem = f"{rss[name]:.0f}" if name in rss else "–"
        used = f"{statistics.median(cpu[name]):.2f}" if cpu.get(name) else "–"
        kernel = f"{statistics.median(sys_cpu[name]):.2f}" if sys_cpu.get(name) else "–"
        pool = f"{statistics.median(pool_cpu[name]):.2f}" if pool_cpu.get(name) else "–"
        spare = f"{statistics.median(idle[name]):.2f}" if idle.get(name) else "–"
        ends = f"{statistics.median(peers[name]):.2f}" if peers.get(name) else "–"
        label = labels.get(name, f"proxy, upstream C-MOVE, {name}")
        print(
            f"| {label} | {wall:.2f} | {wall / base:.2f} | {total / 1e6 / wall:.0f} "
            f"| {pixels / 1e6 / wall:.0f} | {first:.3f} | {mem} | {used} | {kernel} | {pool} "
            f"| {ends} | {spare} |"
        )
    if conc["direct"]:
        cd = statistics.median(conc["direct"])
        for name, label in (("direct", "direct"), ("c-move", "proxy, upstream C-MOVE, none")):
            wall = statistics.median(conc[name])
            print(
                f"| {len(uids)} concurrent studies, {label} | {wall:.2f} | {wall / cd:.2f} "
                f"| {conc_total / 1e6 / wall:.0f} (aggregate) | | | | | | | | |"
            )

    if verified:
        print(f"\nlossless output at the pynetdicom destination: {verified}")


if __name__ == "__main__":
    main()
