"""The relay: one C-MOVE/C-GET job, from the cloud's request to the onward C-STOREs.

Follow one instance through these modules, in this order (docs/relay.md has the diagram):

- :mod:`.request` — the request at the boundary: access rule, identifier → visible studies;
- :mod:`.plan` — ``RelayService``: the C-MOVE / C-GET / push entry points; the job's plan
  (order/report files, :mod:`.listing`: route each study to its archive, list its instances or
  start early, journal the keys), handed to the engine;
- :mod:`.engine` — the delivery engine every job runs on, also ``jobs retry`` and the automatic
  resume (:mod:`.recovery`, :mod:`.resume`): open the destination, start the upstream, pump;
  journal how the job ended;
- :mod:`.upstream` — the fetching thread: C-MOVE to us / C-GET from the archive into the spool;
- :mod:`dicomproxy.pacs.store` — incoming C-STOREs matched to their retrieval;
- :mod:`.spool` — the job's folder;
- :mod:`.pump` — the one loop: spool → look-ahead → onward associations (:mod:`.sending`: one,
  on the pump's thread; :mod:`.lanes`: several), Pending responses, reconnects; its decisions are
  the pure :mod:`.pumpstep`;
- :mod:`.destinations` — what the pump sends to, one class per kind; :mod:`.forward` — the onward
  C-STORE on a ``Link``; :mod:`.confirmation` — what a send's result means;
- :mod:`.recorder` — the one place a sent instance is counted, journalled and its file dropped;
- :mod:`.outcome` — counts and final status (pure); :mod:`.journal` — jobs and instances, durably.
"""
