"""The HTTP console: /healthz, /readyz, /metrics and the status page."""
