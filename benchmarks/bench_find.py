"""C-FIND latency through a running proxy against a large exam view (not a test).

Builds a view of ``--rows`` rows (default 1,000,000) in PostgreSQL and/or SQLite, with
the indexes a hospital would have (ExamineID unique, PatientID, AccessionNumber,
PerformTime, PatientName, RowTimestamp), starts ``dicomproxy serve`` as a subprocess
on a free port, warms the UID side table, then times C-FIND (one association, reused,
like a PACS client) for: PatientID, AccessionNumber, StudyInstanceUID, one-day date range
+ modality, and a ``王*`` name prefix. Prints p50/p95 per query kind.

With ``--moves N`` the queries run while N C-MOVEs keep the same proxy busy: a real Orthanc PACS
holds one study of real CT slices (``--move-slices``, pydicom-data pixels), the view gets that
study's row, and N threads move it through the proxy (upstream C-MOVE, ``none``) to DCMTK
``storescp --fork`` (a process per association), one move after the other each, until the
queries end (issue 29's "keyed p95 while 4 C-MOVEs run").

    .venv/bin/python benchmarks/bench_find.py --rows 1000000 --db postgresql --db sqlite
    .venv/bin/python -u benchmarks/bench_find.py --db postgresql --keep --moves 4
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from dicomproxy.cli.serve import CHILD_NAME
from dicomproxy.transport import scu
from dicomproxy.transport.net import NODELAY_HANDLERS, Remote, guard_requestor
from dicomproxy.transport.raw.requestor import RawAssociation
from dicomproxy.view.model import exam_view_table
from testkit import free_port, wait_for_echo
from testkit.console_load import ConsoleLoad
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.realct import write_real_study
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import create_view_table, insert_rows

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
GIVEN = "小东伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国志红玉兰海燕鹏飞"
MODALITIES = ("CT", "MR", "DR", "US", "MG", "XA")
COLUMNS = (
    "ExamineID",
    "PatientID",
    "PIDAssigningAuthority",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "PatientAgeUnit",
    "PatientBirthday",
    "AccessionNumber",
    "ExamineType",
    "ExamineItem",
    "RegTime",
    "PerformTime",
    "State",
    "Privacy",
    "HospitalID",
    "HospitalName",
    "StudyInstanceUID",
    "RowTimestamp",
    "Sysid",
)
START = dt.datetime(2020, 1, 1)
DAYS = 5 * 365


def uid(i: int, k: int = 0) -> str:
    return f"1.2.826.0.1.3680043.10.1234.{i}.{k}"


def gen_rows(n: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    rnd = random.Random(seed)
    patients = max(1, n // 3)
    for i in range(n):
        p = rnd.randrange(patients)
        prnd = random.Random(p)
        name = prnd.choice(SURNAMES) + "".join(prnd.choice(GIVEN) for _ in range(prnd.choice((1, 2))))
        when = START + dt.timedelta(seconds=rnd.randrange(DAYS * 86400))
        cell = uid(i) if rnd.random() > 0.05 else f"{uid(i)},{uid(i, 1)}"
        yield (
            f"E{i:08d}",
            f"P{p:07d}",
            "74580626.HIS",
            name,
            prnd.choice("男女"),
            str(prnd.randrange(1, 90)),
            "岁",
            f"{1930 + prnd.randrange(90)}-0{1 + prnd.randrange(9)}-1{prnd.randrange(10)}",
            f"A{i:09d}",
            rnd.choice(MODALITIES),
            "检查",
            when - dt.timedelta(hours=1),
            when,
            "审核完成",
            0 if rnd.random() > 0.02 else 2,
            "74580626",
            "温岭市第一人民医院",
            cell,
            when + dt.timedelta(hours=2),
            "RIS",
        )


INDEXES = [
    ("ux_{t}_examineid", "examineid", True),
    ("ix_{t}_patientid", "patientid", False),
    ("ix_{t}_accession", "accessionnumber", False),
    ("ix_{t}_performtime", "performtime", False),
    ("ix_{t}_patientname", "patientname", False),
    ("ix_{t}_rowtimestamp", "rowtimestamp", False),
]


def build_postgresql(engine: Engine, name: str, rows: int) -> None:
    create_view_table(engine, name)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cols = ", ".join(c.lower() for c in COLUMNS)
        batch = io.StringIO()
        writer = csv.writer(batch)
        for i, row in enumerate(gen_rows(rows), 1):
            writer.writerow(row)
            if i % 100_000 == 0 or i == rows:
                batch.seek(0)
                cur.copy_expert(f"COPY {name} ({cols}) FROM STDIN WITH (FORMAT csv)", batch)
                batch = io.StringIO()
                writer = csv.writer(batch)
        for idx, col, unique in INDEXES:
            cur.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX {idx.format(t=name)} ON {name} ({col})")
        # LIKE '王%' needs a pattern-ops index unless the database collation is C
        cur.execute(f"CREATE INDEX ix_{name}_patientname_like ON {name} (patientname varchar_pattern_ops)")
        cur.execute(f"ANALYZE {name}")
        raw.commit()
    finally:
        raw.close()


def build_sqlite(engine: Engine, name: str, rows: int) -> None:
    create_view_table(engine, name)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA journal_mode=OFF")
        cur.execute("PRAGMA synchronous=OFF")
        cols = ", ".join(c.lower() for c in COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        sql = f"INSERT INTO {name} ({cols}) VALUES ({marks})"
        batch: list[tuple[Any, ...]] = []
        for row in gen_rows(rows):
            batch.append(tuple(v.isoformat(" ") if isinstance(v, dt.datetime) else v for v in row))
            if len(batch) == 50_000:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)
        for idx, col, unique in INDEXES:
            cur.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX {idx.format(t=name)} ON {name} ({col})")
        cur.execute(f"ANALYZE {name}")
        raw.commit()
    finally:
        raw.close()


def existing_rows(engine: Engine, name: str) -> int | None:
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())
    except Exception:
        return None


NO_PACS = '[pacs]\nae_title = "NOPACS"\nhost = "127.0.0.1"\nport = 1'


def _movers(
    movers: int, proxy: Remote, dest_ae: str, study_uid: str, dest_dir: Path, stop: Any, results: Any
) -> None:
    """The child process of :meth:`MoveLoad.running`: ``movers`` threads, each C-MOVEing the study
    through the proxy, one move after the other, until ``stop``; (durations, errors) to ``results``."""
    done: list[float] = []
    errors: list[str] = []

    def mover() -> None:
        ident = scu.identifier(study_uids=[study_uid])
        while not stop.is_set():
            t0 = time.perf_counter()
            res = scu.move(proxy, dest_ae, ident, calling_ae="BENCH", timeout=600)
            if res.status != 0 or res.completed == 0:  # an empty move would be no load at all
                errors.append(res.line())
            else:
                done.append(time.perf_counter() - t0)
            for p in dest_dir.iterdir():  # 4 movers would fill the disk in minutes
                if p.is_file():
                    p.unlink(missing_ok=True)

    threads = [threading.Thread(target=mover, daemon=True) for _ in range(movers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((done, errors))


class MoveLoad:
    """``--moves``: N threads moving one real CT study through the proxy while the queries run."""

    def __init__(self, workdir: Path, movers: int, slices: int) -> None:
        self.workdir, self.movers = workdir, movers
        self.spec = StudySpec("CT", accession="MOVELOAD1", series=1, images_per_series=slices, seed=29)
        self.pacs = Orthanc(workdir / "orthanc")
        # DCMTK storescp, a process per association (--fork): the movers are not held up by it
        self.dest = StoreSCP(workdir / "dest", "DEST", extra=["--fork"])
        self.stop = threading.Event()
        self.done: list[float] = []
        self.errors: list[str] = []
        self.bytes_per_move = 0

    def start(self, engine: Engine, view: str, proxy: Remote) -> MoveLoad:
        files = write_real_study(self.spec, self.workdir / "study")
        self.bytes_per_move = sum(p.stat().st_size for p in files)
        self.pacs.start()
        self.pacs.upload(files)
        self.pacs.add_modality("proxy", proxy)
        self.dest.start()
        self.drop_row(engine, view)
        # RowTimestamp now, as a RIS stamps an inserted row: a kept side table (--keep/--workdir)
        # learns the row's UID by its incremental sync, which reads only rows stamped after its mark
        insert_rows(engine, [exam_row(self.spec, RowTimestamp=dt.datetime.now())], name=view)
        return self

    def drop_row(self, engine: Engine, view: str) -> None:
        with engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {view} WHERE examineid = :e"), {"e": f"E{self.spec.accession}"})

    def config(self) -> str:
        """The ``[pacs]`` and destination peer of the proxy's config."""
        pacs, dest = self.pacs.remote, self.dest.remote
        return (
            f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
            'retrieve = "c-move"\n[compression]\nmode = "none"\n'
            f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "127.0.0.1"\nport = {dest.port}\n'
        )

    @contextlib.contextmanager
    def running(self, proxy: Remote) -> Iterator[None]:
        """The movers run in a process of their own: in this one their pynetdicom reactors (two
        threads per association, each waking every millisecond) would hold up the C-FIND client's
        own threads, and the client's delays are not the proxy's."""
        spawn = multiprocessing.get_context("spawn")
        stop, results = spawn.Event(), spawn.Queue()
        child = spawn.Process(
            target=_movers,
            args=(
                self.movers,
                proxy,
                self.dest.ae_title,
                self.spec.study_uid,
                self.dest.outdir,
                stop,
                results,
            ),
            daemon=True,
        )
        child.start()
        time.sleep(3.0)  # the child's start-up and every mover past its association set-up
        t0 = time.perf_counter()
        try:
            yield
        finally:
            window = time.perf_counter() - t0
            stop.set()
            self.done, self.errors = results.get(timeout=900)
            child.join(60)
            mb = len(self.done) * self.bytes_per_move / 1e6
            print(
                f"[moves] {self.movers} movers: {len(self.done)} moves of {self.spec.instance_count} slices "
                f"completed ({mb:.0f} MB, ≈ {mb / window:.0f} MB/s over the {window:.0f} s of queries), "
                f"median {statistics.median(self.done) if self.done else float('nan'):.2f} s each, "
                f"{len(self.errors)} failed {self.errors[:2]}",
                flush=True,
            )

    def close(self, engine: Engine, view: str) -> None:
        self.dest.stop()
        self.pacs.stop()
        self.drop_row(engine, view)


def write_config(
    workdir: Path,
    url: str,
    name: str,
    port: int,
    http_port: int = 0,
    moves: MoveLoad | None = None,
    audit: bool = True,
    ae_title: str = "DICOMPROXY",
    query_process: bool = True,
    nice: int = 10,
) -> Path:
    """The proxy's config (``ae_title`` other than DICOMPROXY: the mover's own proxy, ``--move-proxy
    other``, with its data directory and config file named after it)."""
    tail = "" if ae_title == "DICOMPROXY" else f"-{ae_title.lower()}"
    path = workdir / f"bench{tail}.toml"
    path.write_text(
        f"""[http]
port = {http_port}
[audit]
enabled = {"true" if audit else "false"}
[proxy]
ae_title = "{ae_title}"
host = "127.0.0.1"
port = {port}
data_dir = "{workdir / ("var" + tail)}"
query_process = {"true" if query_process else "false"}
data_path_nice = {nice}
[hospital]
id = "74580626"
name = "温岭市第一人民医院"
[view]
url = "{url}"
name = "{name}"
max_results = 1000
{moves.config() if moves else NO_PACS}
[[peers]]
ae_title = "BENCH"
host = "127.0.0.1"
port = 1
[logging]
level = "INFO"
""",
        encoding="utf-8",
    )
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


#: The kinds issue 29's target names ("keyed p95").
KEYED = ("PatientID", "AccessionNumber", "StudyInstanceUID")


class _RawClient:
    """A C-FIND SCU on the raw framing (:class:`dicomproxy.transport.raw.requestor.RawAssociation`,
    the proxy's own requestor to its archives): one thread, no reactor — so what it times is the
    proxy's answer, not a client's polling (pynetdicom's SCU wakes two threads per message)."""

    def __init__(self, port: int, path: str) -> None:
        sops = [StudyRootQueryRetrieveInformationModelFind]
        if path == "pynetdicom":
            sops.append(StudyRootQueryRetrieveInformationModelMove)
        contexts = [build_context(sop, [ExplicitVRLittleEndian]) for sop in sops]
        for n, cx in enumerate(contexts):
            cx.context_id = 2 * n + 1
        self.assoc = RawAssociation.open(
            "127.0.0.1", port, calling_ae="BENCH", called_ae="DICOMPROXY", contexts=contexts, dimse_timeout=30
        )
        self.ids = iter(range(1, 65536))

    def find(self, q: Dataset) -> Iterator[tuple[int, Dataset | None]]:
        sop = StudyRootQueryRetrieveInformationModelFind
        for code, data in self.assoc.find(sop, self.assoc.encode(sop, q), next(self.ids)):
            yield code, (decode(io.BytesIO(data), False, True) if data else None)

    def close(self) -> None:
        self.assoc.release()


def serve_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds (user + system, all threads) process ``pid`` and its query process have used so
    far (``/proc/PID/stat`` fields 14 and 15): the serving process's cost per query, less noisy than
    latency on a busy machine."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid, *query_children(pid)]

    def read() -> float:
        total = 0
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / tick

    return read


def query_children(pid: int) -> list[int]:
    """The query process of serve ``pid`` (:mod:`dicomproxy.queryproc`), if it runs one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(stat[1]) == pid and (b"query-process" in cmdline or comm == CHILD_NAME):
            found.append(int(entry.name))
    return found


def bench(
    port: int,
    rows: int,
    queries: int,
    only: str | None = None,
    path: str = "raw",
    keyed_only: bool = False,
    client: str = "pynetdicom",
    cpu: Callable[[], float] | None = None,
    cpu_ms: dict[str, float] | None = None,
) -> dict[str, tuple[float, float, float]]:
    """``path``: "raw" proposes C-FIND only (the proxy's raw query acceptor answers), "pynetdicom"
    also a C-MOVE context (the proxy's pynetdicom association answers, as before issue 29).
    ``client``: the SCU that times the queries, pynetdicom's or :class:`_RawClient`. With ``cpu``
    (:func:`serve_cpu`), the serving process's CPU ms per query of each kind go to ``cpu_ms``."""
    rnd = random.Random(11)
    ae = AE("BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    if path == "pynetdicom":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    if client == "raw":
        raw = _RawClient(port, path)
        finder: Callable[[Dataset], Iterator[tuple[int, Dataset | None]]] = raw.find
        close: Callable[[], object] = raw.close
    else:
        kwargs: dict[str, Any] = {"ae_title": "DICOMPROXY", "evt_handlers": NODELAY_HANDLERS}
        assoc = ae.associate("127.0.0.1", port, **kwargs)
        assert assoc.is_established
        guard_requestor(assoc)  # pynetdicom#875: the reactor must not take C-FIND responses

        def finder(q: Dataset) -> Iterator[tuple[int, Dataset | None]]:
            for status, ds in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
                if not status or "Status" not in status:
                    raise RuntimeError(
                        f"C-FIND: no response within {ae.dimse_timeout} s (association aborted)"
                    )
                yield int(status.Status), ds

        close = assoc.release

    def run(keys: dict[str, str]) -> tuple[float, int]:
        q = Dataset()
        q.SpecificCharacterSet = "ISO_IR 192"
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        q.PatientName = ""
        q.StudyDate = ""
        for k, v in keys.items():
            setattr(q, k, v)
        t0 = time.perf_counter()
        n = 0
        for status, _ds in finder(q):
            if status in (0xFF00, 0xFF01):
                n += 1
            elif status != 0:
                raise RuntimeError(f"C-FIND {keys} failed: 0x{status:04X}")
        return (time.perf_counter() - t0) * 1000, n

    def day() -> str:
        d = (START + dt.timedelta(days=rnd.randrange(DAYS))).strftime("%Y%m%d")
        return f"{d}-{d}"

    kinds: dict[str, Callable[[], dict[str, str]]] = {
        "PatientID": lambda: {"PatientID": f"P{rnd.randrange(max(1, rows // 3)):07d}"},
        "AccessionNumber": lambda: {"AccessionNumber": f"A{rnd.randrange(rows):09d}"},
        "StudyInstanceUID": lambda: {"StudyInstanceUID": uid(rnd.randrange(rows))},
        "StudyDate(1 day)+ModalitiesInStudy": lambda: {"StudyDate": day(), "ModalitiesInStudy": "CT"},
        "PatientName 王*": lambda: {"PatientName": "王*"},
        "PatientName Wang^Xiaodong (pinyin)": lambda: {"PatientName": "Wang^Xiaodong"},
    }
    out: dict[str, tuple[float, float, float]] = {}
    try:
        for kind, make in kinds.items():
            if only is not None and kind != only:
                continue
            if keyed_only and kind not in KEYED:
                continue
            n = queries if "王" not in kind else max(5, queries // 10)
            n = n if "pinyin" not in kind else max(5, queries // 4)
            run(make())  # warm-up
            c0 = cpu() if cpu is not None else 0.0
            times, counts = zip(*(run(make()) for _ in range(n)), strict=True)
            if cpu is not None and cpu_ms is not None:
                cpu_ms[kind] = (cpu() - c0) * 1000 / n
            out[kind] = (percentile(list(times), 0.5), percentile(list(times), 0.95), statistics.mean(counts))
    finally:
        close()
        ae.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", action="append", choices=("postgresql", "sqlite"))
    ap.add_argument("--pg-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None, help="Keep the SQLite view and side tables here.")
    ap.add_argument("--keep", action="store_true", help="Keep the PostgreSQL table (reused next time).")
    ap.add_argument(
        "--console",
        action="store_true",
        help="run the queries twice: console off, then on with /metrics and /api/status polled each second",
    )
    ap.add_argument("--no-audit", action="store_true", help="[audit] enabled = false (default: on)")
    ap.add_argument("--moves", type=int, default=0, help="C-MOVEs kept running while the queries run")
    ap.add_argument("--move-slices", type=int, default=100, help="real CT slices in the moved study")
    ap.add_argument(
        "--client",
        choices=("pynetdicom", "raw"),
        default="pynetdicom",
        help="the SCU that times the queries: pynetdicom's, or one on the raw framing (no reactor threads)",
    )
    ap.add_argument(
        "--move-proxy",
        choices=("same", "other"),
        default="same",
        help="the C-MOVEs through the queried proxy (same) or through a second serve process (other)",
    )
    ap.add_argument("--keyed-only", action="store_true", help="only " + ", ".join(KEYED))
    ap.add_argument(
        "--find-path",
        action="append",
        choices=("raw", "pynetdicom"),
        help="which of the proxy's C-FIND paths answers (repeat for both, alternately; default raw)",
    )
    ap.add_argument(
        "--query-process",
        action="append",
        choices=("on", "off"),
        help="[proxy] query_process of the queried proxy (repeat for both, one serve each; default on)",
    )
    ap.add_argument("--nice", type=int, default=10, help="[proxy] data_path_nice of the queried proxy")
    args = ap.parse_args()
    for kind in args.db or ["postgresql", "sqlite"]:
        if args.workdir:
            workdir = args.workdir / kind
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        name = "v_bench_find"
        url = args.pg_url if kind == "postgresql" else f"sqlite:///{workdir / 'view.db'}"
        engine = create_engine(url)
        if existing_rows(engine, name) == args.rows:
            print(f"[{kind}] reusing the existing {args.rows}-row view", flush=True)
        else:
            t0 = time.perf_counter()
            (build_postgresql if kind == "postgresql" else build_sqlite)(engine, name, args.rows)
            print(
                f"[{kind}] built {args.rows} rows with indexes in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        runs = [("console off", 0), ("console on", free_port())] if args.console else [("", 0)]
        for label, http_port in runs:
            for setting in args.query_process or ["on"]:
                qp = f"query process {setting}" + (f", nice {args.nice}" if setting == "on" else "")
                args.process = setting == "on"
                serve_and_bench(
                    kind, workdir, url, name, args, http_port, f"{label}, {qp}" if label else qp, engine
                )
        if kind == "postgresql" and not args.keep:
            exam_view_table(name).drop(engine, checkfirst=True)
        engine.dispose()


def serve_and_bench(
    kind: str, workdir: Path, url: str, name: str, args: Any, http_port: int, label: str, engine: Engine
) -> None:
    """Start serve (console on ``http_port``, 0 = off), wait for the side tables, time the queries
    (with ``args.moves`` C-MOVEs running through the same proxy)."""
    tag = f"{kind}{', ' + label if label else ''}{f', {args.moves} C-MOVEs running' if args.moves else ''}"
    port = free_port()
    proxy = Remote("DICOMPROXY", "127.0.0.1", port)
    # --move-proxy other: the moves run through a second serve process (its own AE title), so the
    # queried proxy has the same machine load but no move thread in its process (its GIL is its own)
    mover = Remote("MOVEPROXY", "127.0.0.1", free_port()) if args.move_proxy == "other" else proxy
    moves = (
        MoveLoad(workdir / "moves", args.moves, args.move_slices).start(engine, name, mover)
        if args.moves
        else None
    )
    if moves is not None:
        tag += f" (through {'a second' if mover is not proxy else 'the same'} proxy)"
    try:
        with (
            _second_proxy(workdir, url, name, mover, moves, args)
            if mover is not proxy
            else contextlib.nullcontext()
        ):
            _serve_and_bench(tag, workdir, url, name, args, http_port, port, moves, mover)
    finally:
        if moves is not None:
            moves.close(engine, name)


def _side_table_built(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for serve's UID/pinyin side tables, built in the background at start-up: the build's
    end is "full sync read N view rows" (or "already built" for a kept side table); lookups
    meanwhile scan the view, which is not what is measured here."""
    _logged(proc, log, ("uid side table: full sync read", "uid side table: already built"))


def _logged(proc: subprocess.Popen[bytes], log: Path, lines: tuple[str, ...]) -> None:
    """Wait until one of ``lines`` is in serve's log."""
    t1 = time.perf_counter()
    while not any(d in log.read_text(errors="replace") for d in lines):
        if proc.poll() is not None or time.perf_counter() - t1 > 600:
            raise RuntimeError(f"{lines[0]!r} not logged; see {log}")
        time.sleep(0.5)


@contextlib.contextmanager
def _second_proxy(
    workdir: Path, url: str, name: str, mover: Remote, moves: MoveLoad | None, args: Any
) -> Iterator[None]:
    cfg = write_config(
        workdir,
        url,
        name,
        mover.port,
        0,
        moves,
        audit=not args.no_audit,
        ae_title=mover.ae_title,
        query_process=False,  # as before the query process: the queried proxy's priority as the movers'
        nice=0,
    )
    exe = Path(sys.executable).with_name("dicomproxy")
    log = workdir / f"serve-{mover.ae_title.lower()}.log"
    proc = subprocess.Popen([str(exe), "serve", "-c", str(cfg)], stderr=open(log, "wb"))  # noqa: SIM115
    try:
        wait_for_echo(mover, 30, calling="BENCH", proc=proc)
        _side_table_built(proc, log)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def _serve_and_bench(
    tag: str,
    workdir: Path,
    url: str,
    name: str,
    args: Any,
    http_port: int,
    port: int,
    moves: MoveLoad | None,
    mover: Remote,
) -> None:
    cfg = write_config(
        workdir,
        url,
        name,
        port,
        http_port,
        moves,
        audit=not args.no_audit,
        query_process=args.process,
        nice=args.nice,
    )
    exe = Path(sys.executable).with_name("dicomproxy")
    proc = subprocess.Popen([str(exe), "serve", "-c", str(cfg)], stderr=open(workdir / "serve.log", "wb"))  # noqa: SIM115
    try:
        wait_for_echo(Remote("DICOMPROXY", "127.0.0.1", port), 30, calling="BENCH", proc=proc)
        t1 = time.perf_counter()
        _side_table_built(proc, workdir / "serve.log")
        print(f"[{tag}] side tables built in the background in {time.perf_counter() - t1:.1f} s", flush=True)
        if args.process:
            _logged(proc, workdir / "serve.log", ("serving C-FIND/C-ECHO-only associations",))
        t1 = time.perf_counter()
        bench(port, args.rows, 1, only="StudyInstanceUID")
        print(f"[{tag}] first UID query {time.perf_counter() - t1:.1f} s", flush=True)
        load = ConsoleLoad(f"http://127.0.0.1:{http_port}") if http_port else contextlib.nullcontext()
        busy = moves.running(mover) if moves else contextlib.nullcontext()
        paths = args.find_path or ["raw"]
        with load, busy:
            for path in paths:
                cpu_ms: dict[str, float] = {}
                results = bench(
                    port,
                    args.rows,
                    args.queries,
                    path=path,
                    keyed_only=args.keyed_only,
                    client=args.client,
                    cpu=serve_cpu(proc.pid),
                    cpu_ms=cpu_ms,
                )
                label = f"{tag}, {path} path, {args.client} client"
                for q, (p50, p95, n) in results.items():
                    print(
                        f"[{label}] {q:40s} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms   answers/query {n:7.1f}"
                        f"   serve CPU/query {cpu_ms[q]:6.2f} ms"
                    )
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
