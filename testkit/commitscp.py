"""A Storage Commitment SCP for tests (PS3.4 Annex J): a :class:`FakeDestination` that also takes
N-ACTION "Request Storage Commitment" and answers — or not — as told.

``mode``:
- ``"same"``: the N-EVENT-REPORT on the requesting association, right after the N-ACTION-RSP;
- ``"new"``: on a new association to ``reply_to`` (this SCP takes the SCP role, PS3.7 D.3.3.4);
- ``"silent"``: never.
``fail``: SOP Instance UIDs reported failed (Failure Reason 0x0110) — once each, unless ``fail_always``;
``fail_unknown``: report a Transaction UID that was never asked; ``strict``: a reference to an
instance this SCP never received fails with 0x0112, No such object instance (as Orthanc's SCP,
which looks each one up).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dicomproxy.transport.net import Remote, guard_requestor
from testkit.fakepacs import FakeDestination

INSTANCE = "1.2.840.10008.1.20.1.1"


class CommitmentDestination(FakeDestination):
    def __init__(
        self, ae_title: str = "COMMITDEST", mode: str = "new", reply_to: Remote | None = None
    ) -> None:
        super().__init__(ae_title)
        self.mode = mode
        self.reply_to = reply_to
        self.fail: set[str] = set()
        self.fail_always = False
        self.strict = False
        #: (Transaction UID, referenced SOP Instance UIDs) of every N-ACTION received.
        self.requests: list[tuple[str, list[str]]] = []
        #: N-EVENT-REPORT-RSP statuses we got back.
        self.report_statuses: list[int] = []
        self.ae.add_supported_context(StorageCommitmentPushModel)

    def start(self) -> CommitmentDestination:
        super().start()
        self._server.bind(evt.EVT_N_ACTION, self._action)
        return self

    def _action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.action_information
        uid = str(info.TransactionUID)
        refs = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in info.ReferencedSOPSequence
        ]
        with self._lock:
            self.requests.append((uid, [u for _, u in refs]))
        if self.mode != "silent":
            threading.Thread(target=self._report, args=(event.assoc, uid, refs), daemon=True).start()
        return 0x0000, None

    def _report_dataset(self, uid: str, refs: list[tuple[str, str]]) -> tuple[int, Dataset]:
        ds = Dataset()
        ds.TransactionUID = uid
        ok, bad = [], []
        with self._lock:
            held = {u for u, _ in self.received}
        for cls, sop in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = cls
            item.ReferencedSOPInstanceUID = sop
            if self.strict and sop not in held:
                item.FailureReason = 0x0112
                bad.append(item)
            elif sop in self.fail:
                item.FailureReason = 0x0110
                bad.append(item)
                if not self.fail_always:
                    self.fail.discard(sop)
            else:
                ok.append(item)
        if ok:
            ds.ReferencedSOPSequence = ok
        if bad:
            ds.FailedSOPSequence = bad
        return (2 if bad else 1), ds

    def _report(self, assoc: Any, uid: str, refs: list[tuple[str, str]]) -> None:
        event_type, ds = self._report_dataset(uid, refs)
        if self.mode == "same":
            time.sleep(0.05)  # after our N-ACTION-RSP is on the wire
            status, _ = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel, INSTANCE)
        else:
            time.sleep(0.2)
            assert self.reply_to is not None
            ae = AE(ae_title=self.ae_title)
            ae.add_requested_context(StorageCommitmentPushModel)
            role = build_role(StorageCommitmentPushModel, scp_role=True)
            out = ae.associate(
                self.reply_to.host, self.reply_to.port, ae_title=self.reply_to.ae_title, ext_neg=[role]
            )
            if not out.is_established:
                ae.shutdown()
                return
            guard_requestor(out)  # pynetdicom#875: the reactor must not take the N-EVENT-REPORT-RSP
            status, _ = out.send_n_event_report(ds, event_type, StorageCommitmentPushModel, INSTANCE)
            out.release()
            ae.shutdown()
        with self._lock:
            self.report_statuses.append(
                int(status.Status) if status is not None and "Status" in status else -1
            )
