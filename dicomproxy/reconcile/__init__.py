"""The completeness report (``dicomproxy reconcile``, issue 25 item 2; docs/operations.md)."""
