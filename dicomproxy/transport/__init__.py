"""Associations and bytes on the wire.

:mod:`.net` — the one place that opens pynetdicom associations; :mod:`.tls` — TLS contexts;
:mod:`.intake` — every incoming connection screened before an association exists;
:mod:`.raw` — the data path on raw sockets; :mod:`.pynetdicom_compat` — every use of pynetdicom
internals; :mod:`.scu`, :mod:`.findscu` — the requester side of ``dicomproxy move/get/find``.
"""
