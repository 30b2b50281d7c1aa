"""Alerts that reach a person (docs/operations.md, Alerts): incidents read from the journal, the push
queue, the readiness checks and the audit trail; one message when each starts and one when it ends,
to webhooks, 企业微信 and 钉钉 robots and e-mail, decided once among the nodes sharing a journal."""
