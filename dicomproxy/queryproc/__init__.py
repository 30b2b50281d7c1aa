"""The query process: C-FIND/C-ECHO-only associations served by a child process (issue 29).

Why: while C-MOVEs run, the serving process's threads that move images hold the GIL and both
cores; a keyed C-FIND answered in that process waited for them (p95 14–29 ms on the 1 M-row view
with 4 C-MOVEs, docs/performance.md). In a process of its own — and with the images' process at
a lower CPU priority (``[proxy] data_path_nice``) — it does not.

- :mod:`.channel` — the parent–child socket: pickled messages and, with a message, one socket.
- :mod:`.parent` — :class:`~.parent.QueryProcess`: starts the child, hands it each accepted
  connection the intake routes to queries, re-publishes its events and log records, sends it each
  reloaded Config, stops it; when the child is gone, queries are served in the parent again.
- :mod:`.child` — :class:`~.child.QueryWorker`: the child's loop, the raw query acceptor
  (:mod:`dicomproxy.transport.raw.queries`) on the connections it is handed.

``serve`` forks the child at start-up (:func:`dicomproxy.cli.serve.start_query_process`); an
in-process Server (tests) spawns ``python -m dicomproxy query-process --fd N``. Both run
:func:`dicomproxy.cli.serve.run_query_child`.
"""
