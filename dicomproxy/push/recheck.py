"""Re-checks of delivered studies (``[push] recheck_after``, ``rechecks``; docs/push.md).

A delivered item stays due for a few re-checks (schedule: :func:`~dicomproxy.push.decide.next_recheck`);
a worker that claims one lists the study's SOP Instance UIDs at the archive that served it (one
IMAGE-level C-FIND, PS3.4 C.6.2) and compares them, UID by UID, with the instances the destination
confirmed: an instance the PACS holds and the destination never confirmed is new, even when the
count stayed the same (one deleted, one added). Only then does the usual delivery run (which
excludes the confirmed ones, so only the new images go).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydicom.dataset import Dataset

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.errors import DicomServiceError
from dicomproxy.pacs.client import PacsClient, RetrieveKey
from dicomproxy.pacs.routing import route
from dicomproxy.push.decide import next_recheck
from dicomproxy.push.queue import DONE, Item, PushQueue
from dicomproxy.relay.request import parse_keys

LOG = logging.getLogger("dicomproxy.push")


class Rechecks:
    """Runs a due re-check of a delivered item: asks the PACS, ends it or lets the delivery run."""

    def __init__(self, config: Config, queue: PushQueue, relay: Any) -> None:
        self.config = config
        self.push = config.push
        self.queue = queue
        #: The relay service: its ``archives`` (name → PACS client) and view ``resolver``.
        self.relay = relay

    def run(self, item: Item) -> bool:
        """A due re-check of a delivered item: True when the PACS holds an instance of the study
        the destination never confirmed (the caller delivers: only those go); otherwise the item
        is ``done`` again with the next re-check scheduled (or none left), no job made.

        One IMAGE-level C-FIND to the archive that served the item's last job, compared UID by
        UID (a count would miss one deleted and one added); instances confirmed but no longer in
        the PACS are counted in the log line, not undone. A PACS that cannot be asked uses up this
        re-check (WARNING; so does a view that cannot be read when the archive must be routed):
        the schedule stays bounded. A study no longer visible or routable is left to the
        delivery, which drops it. Re-checks turned off since the item was delivered
        (``recheck_after`` or ``rechecks`` 0): it ends, nothing asked."""
        n = max(1, self.push.rechecks - item.rechecks + 1)
        if self.push.recheck_after <= 0 or self.push.rechecks <= 0:
            LOG.debug("push item %d: re-checks are off: none left", item.id)
            self._done(item, 0, 0.0)
            return False
        try:
            client = self.archive_of(item)
            if client is None:
                return True
            listed = {r.sop_instance_uid for r in client.find_instances(RetrieveKey(item.study_uid))}
        except DicomServiceError as exc:
            left, delay = next_recheck(item.rechecks, self.push)
            LOG.warning(
                "push item %d: re-check %d could not be done (%s); %s",
                item.id,
                n,
                str(exc)[:200],
                f"next in {delay:.0f} s" if left else "no re-check left",
            )
            self._done(item, left, delay)
            return False
        new = listed - self.queue.excluded(item.id, item.generation)  # a reconcile's fix: held, too
        images = self.queue.confirmed_images(item.id, item.generation)  # our report objects left out
        gone = len(images - listed)  # the destination holds them; the PACS no longer does: not ours to undo
        what = f"the PACS holds {len(listed)} instance(s), {len(images)} confirmed" + (
            f", {gone} of them no longer in the PACS" if gone else ""
        )
        if new:
            LOG.info("push item %d: re-check %d: %s, %d new: delivering the new", item.id, n, what, len(new))
            return True
        left, delay = next_recheck(item.rechecks, self.push)
        LOG.info(
            "push item %d: re-check %d: %s: nothing new; %s",
            item.id,
            n,
            what,
            f"next in {delay:.0f} s" if left else "no re-check left",
        )
        self._done(item, left, delay)
        return False

    def _done(self, item: Item, left: int, delay: float) -> None:
        self.queue.finish(
            item,
            DONE,
            next_at=self.queue.now() + dt.timedelta(seconds=delay),
            rechecks=left,
            touch=False,
        )
        events.publish(events.PushDelivered(item.id, item.destination, "rechecked", 0))

    def archive_of(self, item: Item) -> PacsClient | None:
        """The archive client to ask about ``item``'s study: the one that served its last job, else
        the one its view row routes to now; None when the study is not visible or not routable."""
        archives: dict[str, PacsClient] = self.relay.archives
        client = archives.get(self.queue.archive(item.id, item.generation))
        if client is not None:
            return client
        if self.relay.resolver is None:
            return None
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = item.study_uid
        _, routed = parse_keys(identifier, self.relay.resolver)
        if not routed:
            return None
        try:
            return archives.get(route(self.config, routed[0][1].sysid, routed[0][1].modality).name)
        except DicomServiceError:  # Unroutable
            return None
