"""Test support: real redis-server processes, real `celery worker` processes, the `bot` CLI."""
