"""What this worker process knows about itself: identity, shared breaker and counters, the requests
it holds."""
