"""The audit trail (hash-chained, in the journal database) and DICOM audit messages over syslog."""
