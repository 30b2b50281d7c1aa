"""N-EVENT-REPORT of the Storage Commitment Push Model, received on an association the peer
opened to us (PS3.4 J.3.3; the peer takes the SCP role, PS3.7 D.3.3.4): recorded in the
ledger; a report for a transaction we never sent, or a malformed one, is refused with its
status (PS3.7 10.1.1.1.8) and one log line."""

from __future__ import annotations

import logging

from pynetdicom import evt

from dicomproxy.context import AppContext
from dicomproxy.relay.commitments import answer_status
from dicomproxy.transport.commitment import PROCESSING_FAILURE, Report, parse_report

LOG = logging.getLogger("dicomproxy.commitment")


def handle_event_report(event: evt.Event, ctx: AppContext) -> tuple[int, None]:
    report: Report | int = parse_report(int(event.event_type or 0), event.event_information)
    calling = str(event.assoc.requestor.ae_title).strip()
    if isinstance(report, int):
        LOG.warning(
            "N-EVENT-REPORT from %s refused (0x%04X): not a Storage Commitment result", calling, report
        )
        return report, None
    if ctx.commitments is None:
        LOG.warning("N-EVENT-REPORT from %s refused: no peer is asked for Storage Commitment", calling)
        return PROCESSING_FAILURE, None  # 0x0110 Processing failure (PS3.7 C.4): no ledger here
    return answer_status(ctx.commitments, report), None
