"""A Storage SCP on pynetdicom that accepts HTJ2K (not a test; the HTJ2K destination of
``bench_relay.py --dest pynetdicom``): DCMTK 3.6.7 storescp negotiates .4.201 from a profile but
then refuses to receive it ("Unsupported transfer syntax"), Orthanc 1.10 is built on the same DCMTK.

    .venv/bin/python benchmarks/pyscp.py --port P --aet DEST --out DIR

Every storage class with every transfer syntax pynetdicom knows (HTJ2K .4.201-.203 among them);
each data set is written to a temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``, Part 10
with its File Meta) and moved into ``DIR`` unread. TCP_NODELAY on the accepted sockets. One
association at a time is not enforced (pynetdicom: a thread per association).
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomproxy.transport.net import NODELAY_HANDLERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aet", default="DEST")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    counter = itertools.count()

    def store(event: Any) -> int:
        os.replace(event.dataset_path, args.out / f"{os.getpid()}-{next(counter)}.dcm")
        return 0x0000

    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = 0
    ae.network_timeout = None
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    handlers: Any = [*NODELAY_HANDLERS, (evt.EVT_C_STORE, store)]
    ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main()
