"""bot's parts of Celery's broker machinery: the kombu transport, the guarded consumer, the queue-
depth autoscaler."""
