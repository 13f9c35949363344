"""Building blocks with no bot knowledge: the clock, the loop thread, backoff, circuit breakers,
exit codes, the version."""
