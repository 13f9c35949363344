"""One worker's membership in the fleet: the bootstep, registration and heartbeats, worker records,
lifecycle, identity, health, services."""
