"""Corrections after delivery (IHE RAD IOCM; issue 26, docs/identity.md): every delivered study,
pushed or retrieved by the cloud with C-MOVE/C-GET, compared with the exam view; a changed identity,
a re-linked exam, a withdrawn row or a revised report journalled, warned of, and — toward an
``iocm = true`` destination — told with a rejection note (KOS, PS3.3 A.35.4) and what replaces it.
A service of ``serve`` of its own (:mod:`dicomproxy.corrections.service`), push or not."""
