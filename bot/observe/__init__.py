"""What a worker exposes about itself: Prometheus /metrics."""
