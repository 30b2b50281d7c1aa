"""The data path on raw sockets, beside pynetdicom (issue 7: a relay at line rate).

pynetdicom handles every PDU as Python objects passed between two threads per association,
polled every millisecond; on 2 cores that capped the relay at 29–54 MB/s while the direct
PACS→destination C-MOVE ran at 330–475 MB/s (docs/performance.md, py-spy profiles there).
This package moves the bytes of the two hot legs without that machinery and leaves everything
else — negotiation logic, Q/R services, C-FIND, TLS, the cloud's associations — to pynetdicom:

- :mod:`.receiver`: an archive's store-only association (our C-MOVE-to-self), taken over right
  after ``accept()``; data sets streamed to files.
- :mod:`.sender`: onward C-STOREs of encoded files written to the socket of a pynetdicom
  association in batches of PDUs; the response is read by pynetdicom.
- :mod:`.pdu`: PS3.8 framing both share.

``[proxy] fast_path = false`` turns both off.
"""
