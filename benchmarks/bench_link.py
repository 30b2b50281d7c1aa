"""Relay over a slow or far link (not a test; issue 17): shaped bandwidth and added round-trip time.

    .venv/bin/python benchmarks/bench_link.py --link shaped --rates 100,20 --slices 60      # as root
    .venv/bin/python benchmarks/bench_link.py --link delay --rtts 10,40 --slices 100 --lanes 1,2,4

``--link shaped``: the destination (DCMTK storescp, ``--fork``) runs in its own network namespace,
joined to this one by a veth pair whose two ends are shaped with ``tc qdisc … tbf`` at each rate
(this kernel has tbf and htb, not netem). The benchmark creates and deletes the namespace itself
(root needed). Per rate: the direct C-MOVE Orthanc → storescp across the link (the baseline), then
the proxy (upstream C-MOVE from Orthanc on loopback, onward across the link) in each mode. "link
busy %" = bytes the veth sent toward the destination during the move / (wall × rate): how full the
proxy keeps the link (issue 17 asks ≥ 90 % in ``none``).

``--link delay``: a userspace relay (``benchmarks/delayrelay.py``) in front of storescp adds each
RTT; the direct C-MOVE and the proxies (``onward_associations`` = each of ``--lanes``) go through it.

Real-CT corpus (``testkit.realct``) by default; alternating rounds, median; load average printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_relay import cpu_seconds, raw_pixel_bytes, timed_move
from sqlalchemy import create_engine

from dicomproxy.transport.net import Remote
from testkit import free_port, wait_for_echo
from testkit.dcmtk import StoreSCP
from testkit.netns import ShapedLink
from testkit.orthanc import Orthanc
from testkit.realct import write_real_study
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows

LINK = ShapedLink("bench")  # namespace dpbench, veth dpbencha/dpbenchb, 10.78.77.1/.2


def write_config(
    path: Path,
    ae: str,
    port: int,
    data: Path,
    view_url: str,
    pacs: Remote,
    dest: Remote,
    mode: str,
    lanes: int,
) -> None:
    path.write_text(
        f'[http]\nport = 0\n[proxy]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'data_dir = "{data}"\nonward_associations = {lanes}\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        'retrieve = "c-move"\n'
        f'[compression]\nmode = "{mode}"\n[logging]\nlevel = "WARNING"\n'
        f'[[peers]]\nae_title = "BENCH"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "{dest.host}"\nport = {dest.port}\n'
        "check_host = false\n"
    )


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--link", choices=("shaped", "delay"), required=True)
    ap.add_argument("--rates", default="100,20", help="Mbit/s (--link shaped)")
    ap.add_argument("--rtts", default="10,40", help="ms (--link delay)")
    ap.add_argument("--lanes", default="1", help="onward_associations values of the proxies")
    ap.add_argument("--modes", default="none,lossless,lossy")
    ap.add_argument("--slices", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--corpus", choices=("real", "synthetic"), default="real")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    lanes = [int(x) for x in args.lanes.split(",")]
    modes = args.modes.split(",")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-link-"))
    spec = StudySpec("CT", accession="L0001", series=1, images_per_series=args.slices, seed=7)
    files = (write_real_study if args.corpus == "real" else write_study)(spec, work / "study")
    total = sum(p.stat().st_size for p in files)
    pixels = raw_pixel_bytes(files)

    dest = StoreSCP(work / "dest", "DEST", extra=["--fork"])
    relay: subprocess.Popen[bytes] | None = None
    if args.link == "shaped":
        dest.prefix, dest.host = LINK.prefix, LINK.ns_ip
    pacs = Orthanc(work / "orthanc")
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[str] = []
    with LINK.up() if args.link == "shaped" else _nothing():
        dest.start()
        reach = dest.remote
        if args.link == "delay":
            reach = Remote("DEST", "127.0.0.1", free_port())
        pacs.start()
        try:
            pacs.upload(files)
            view_url = f"sqlite:///{work / 'view.db'}"
            engine = create_engine(view_url)
            create_view_table(engine)
            insert_rows(engine, [exam_row(spec)])
            engine.dispose()
            pacs.add_modality("dest", reach)
            setups = [(m, n) for m in modes for n in lanes if m == "none" or n == lanes[-1]]
            proxies: dict[tuple[str, int], tuple[Remote, subprocess.Popen[bytes]]] = {}
            for mode, n in setups:
                ae, port = f"P{mode[:5].upper()}{n}", free_port()
                cfg = work / f"{ae}.toml"
                write_config(cfg, ae, port, work / f"var-{ae}", view_url, pacs.remote, reach, mode, n)
                pacs.add_modality(ae.lower(), Remote(ae, "127.0.0.1", port))
                log = open(work / f"{ae}.log", "wb")  # noqa: SIM115 - lives as long as the process
                proc = subprocess.Popen(
                    [sys.executable, "-m", "dicomproxy", "serve", "-c", str(cfg)], stdout=log, stderr=log
                )
                procs.append(proc)
                proxies[(mode, n)] = (Remote(ae, "127.0.0.1", port), proc)
                wait_for_echo(proxies[(mode, n)][0], 30, calling="BENCH")
            conditions = [int(x) for x in (args.rates if args.link == "shaped" else args.rtts).split(",")]
            for cond in conditions:
                if args.link == "shaped":
                    LINK.shape(cond)
                else:
                    if relay is not None:
                        relay.terminate()
                        relay.wait(10)
                    relay_cmd = [sys.executable, str(Path(__file__).parent / "delayrelay.py")]
                    relay_cmd += ["--listen", f"127.0.0.1:{reach.port}", "--target", f"127.0.0.1:{dest.port}"]
                    relay = subprocess.Popen([*relay_cmd, "--rtt-ms", str(cond)])
                    wait_for_echo(reach, 30)
                timed_move(pacs.remote, dest, spec.study_uid, len(files))  # warm-up
                for remote, _ in proxies.values():
                    timed_move(remote, dest, spec.study_uid, len(files))
                runs: dict[str, list[tuple[float, float, float]]] = {}
                for _ in range(args.rounds):
                    for key in ["direct", *proxies]:
                        remote, proc = (pacs.remote, None) if key == "direct" else proxies[key]  # type: ignore[index]
                        l0 = load()
                        b0 = LINK.tx_bytes() if args.link == "shaped" else 0
                        c0 = cpu_seconds(proc.pid) if proc else 0.0
                        wall, _first, _ = timed_move(remote, dest, spec.study_uid, len(files))
                        sent = (LINK.tx_bytes() - b0) if args.link == "shaped" else 0
                        cpu = cpu_seconds(proc.pid) - c0 if proc else 0.0
                        runs.setdefault(str(key), []).append((wall, sent / wall if wall else 0.0, cpu))
                        print(f"# {args.link} {cond}: {key}: {wall:.2f} s (load {l0})", file=sys.stderr)
                direct = statistics.median(w for w, _, _ in runs["direct"])
                when = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load {load()}"
                for key, vals in runs.items():
                    wall = statistics.median(w for w, _, _ in vals)
                    rate = statistics.median(r for _, r, _ in vals)
                    busy = f"{100 * rate * 8 / (cond * 1e6):.0f}" if args.link == "shaped" else "–"
                    cpu = statistics.median(c for _, _, c in vals)
                    label = "direct Orthanc → storescp" if key == "direct" else f"proxy {key}"
                    unit = "Mbit/s" if args.link == "shaped" else "ms RTT"
                    rows.append(
                        f"| {cond} {unit} | {label} | {wall:.2f} | {wall / direct:.2f} "
                        f"| {pixels / 1e6 / wall:.1f} "
                        f"| {busy} | {cpu:.2f} | {when} |"
                    )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            if relay is not None:
                relay.terminate()
                relay.wait(10)
            dest.stop()
            pacs.stop()
    print(
        f"\n{args.slices} CT slices ({args.corpus} corpus), {total / 1e6:.1f} MB files, "
        f"{pixels / 1e6:.1f} MB raw pixels, median of {args.rounds} round(s); "
        "proxy key = (mode, onward_associations)\n"
    )
    print(
        "| link | path | wall s | ratio to direct | raw-pixel MB/s | link busy % | proxy CPU s | date, load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
