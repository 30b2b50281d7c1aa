"""Push mode (issue 16, docs/push.md): exams the view announces by RowTimestamp are queued in the
journal database and delivered to ``[push] destinations`` by the relay's own job, with their
order/report files as DICOM objects; several nodes share the queue through PostgreSQL row locks."""
