"""Configuration: the one frozen Settings object, the Celery config built from it, logging."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
