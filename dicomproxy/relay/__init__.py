"""The relay: one C-MOVE/C-GET job, from the cloud's request to the onward C-STOREs.

Follow one instance through these modules, in this order (docs/relay.md has the diagram):

- :mod:`.request` — the request at the boundary: access rule, identifier → visible studies;
- :mod:`.plan` — the job's plan: route each study to its archive, list its instances (or start
  early), open the destination, start the upstream, hand over to the pump;
- :mod:`.upstream` — the fetching thread: C-MOVE to us / C-GET from the archive into the spool;
- :mod:`dicomproxy.pacs.store` — incoming C-STOREs matched to their retrieval;
- :mod:`.spool` — the job's folder;
- :mod:`.pump` — spool → transcode → onward send (:mod:`.forward`), Pending responses, reconnects;
- :mod:`.outcome` — counts and final status (pure); :mod:`.journal` — jobs and instances, durably;
- :mod:`.recovery`, :mod:`.resume` — start-up reconciliation, ``jobs retry`` and automatic resume,
  through the same plan and pump.
"""
