"""Alert delivery: the outbox of notifications and the sinks (log, Sentry, webhook, Slack)."""
