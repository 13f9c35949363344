"""Reports delivered to sinks: the outbox stream, the relay, the HTTP sink."""
