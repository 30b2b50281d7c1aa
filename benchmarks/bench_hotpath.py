"""CPU of the relay's per-instance functions, in process (issue 29; not a test).

    .venv/bin/python benchmarks/bench_hotpath.py [--repeat 5]

Each line: the median over ``--repeat`` runs of the CPU time (``time.thread_time``, the calling
thread only) per call of one function of the raw data path, on a 512 kB instance. Reliable on a
loaded machine where wall times are not. To compare two revisions, run the script of each tree with
``PYTHONPATH=<tree>`` alternately (docs/performance.md, issue 29).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context

from dicomproxy.transport.raw import dimse, pdu, wire
from dicomproxy.transport.raw.sender import store_command

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
SIZE = 525_000


def per_call(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Median µs of CPU per call."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(n):
            fn()
        runs.append((time.thread_time() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hotpath-"))
    file = work / "x.dcm"
    head = wire.file_preamble_and_meta(CT, generate_uid(), EXPLICIT)
    file.write_bytes(head + os.urandom(SIZE))
    meta_end = len(head)
    results: dict[str, float] = {}

    # onward C-STORE: framing and writing, to a socketpair drained by another thread
    a, b = socket.socketpair()
    a.settimeout(60)
    sink = bytearray(1 << 20)
    threading.Thread(target=lambda: [None for _ in iter(lambda: b.recv_into(sink), 0)], daemon=True).start()
    cmd = store_command(7, CT, "1.2.3.4", ("CLOUD", 3))
    for max_pdv in (16378, 4 * 1024 * 1024 - 6):
        out = dimse.MessageStream(a, {}, work, max_pdv)

        def send(out: dimse.MessageStream = out) -> None:
            with file.open("rb", buffering=0) as fh:
                fh.seek(meta_end)
                out.send(1, cmd, fh, SIZE)

        results[f"MessageStream.send, 512 kB, max PDV {max_pdv}"] = per_call(send, 200, args.repeat)
    a.close()

    # the archive's C-STORE received into a spool file
    context = build_context(CT, [EXPLICIT])
    context.context_id = 1
    message = b"".join(
        pdu.message_pdus(1, wire.encode_command(cmd), io.BytesIO(os.urandom(SIZE)), SIZE, 16378)
    )
    rx, tx = socket.socketpair()
    n_rx = 200 * args.repeat + 1
    threading.Thread(target=lambda: [tx.sendall(message) for _ in range(n_rx)], daemon=True).start()
    stream = dimse.MessageStream(rx, {1: context}, work, 16378)

    def receive() -> None:
        msg = stream.read()
        assert msg.path is not None
        msg.path.unlink()

    results["MessageStream.read, 512 kB C-STORE (incl. unlink)"] = per_call(receive, 200, args.repeat)

    # per-instance decoding
    rsp = wire.encode_command(
        {"AffectedSOPClassUID": CT, "CommandField": 0x8001, "MessageIDBeingRespondedTo": 7,
         "CommandDataSetType": 0x0101, "Status": 0, "AffectedSOPInstanceUID": "1.2.3.4"}
    )  # fmt: skip
    results["decode_command, C-STORE-RSP"] = per_call(lambda: wire.decode_command(rsp), 20000, args.repeat)
    if hasattr(wire, "read_file_meta"):
        results["read_file_meta"] = per_call(lambda: wire.read_file_meta(file), 5000, args.repeat)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "IMAGE"
    ds.RetrieveAETitle = "ORTHANC"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.SOPClassUID = CT
    identifier = encode(ds, True, True) or b""
    tags = {0x00080018: "SOPInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00080016: "SOPClassUID"}
    if hasattr(wire, "identifier_uids"):
        results["identifier_uids, one C-FIND response"] = per_call(
            lambda: wire.identifier_uids(identifier, True, tags), 20000, args.repeat
        )
    for name, us in results.items():
        print(f"| {name} | {us:.1f} µs |")


if __name__ == "__main__":
    main()
