"""Moved to :mod:`dicomproxy.pacs.store` (incoming C-STOREs belong to the archive retrievals).

Re-exported here only for the relay modules that still import it from here
(``plan``, ``recovery``: being rewritten; they switch to ``dicomproxy.pacs.store``).
"""

from dicomproxy.pacs.store import ReceiveRegistry

__all__ = ["ReceiveRegistry"]
