"""The hospital's archives as the proxy sees them.

:mod:`.routing` — which archive serves an exam (Sysid, ExamineType); :mod:`.client` — one
:class:`~dicomproxy.pacs.client.PacsClient` per archive: IMAGE-level count, C-MOVE to us, C-GET;
:mod:`.find` — SERIES/IMAGE C-FIND forwarding and study-level counts for the view's answers.
"""
