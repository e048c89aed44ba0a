"""What the public observability modules (stream, prometheus, statsd, otel) share: the
stream's messages, the dashboard page and the cumulative counters."""
